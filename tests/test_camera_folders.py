"""CameraFolders and list_images (issue 14): unlabelled images from one folder per camera or a
CSV, and every bad input named in one line with its fix."""
import logging
import os

import pytest
import torch
from PIL import Image

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from dcmip.data.camera_folders import CameraFolders, camera_index, list_images
from dcmip.engine.trainer import load_train_items, train_has_identities
from dcmip.registry import DatasetFormatError, DatasetNotFoundError, UserInputError
from fastreid.config import get_cfg
from fastreid.data.datasets import DATASET_REGISTRY


def image(path, color=(120, 60, 30), size=(32, 64)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return str(path)


def cameras(root, layout):
    """layout: {camera: [relative image paths]}; returns the written paths."""
    return [image(root / cam / rel) for cam, rels in layout.items() for rel in rels]


LAYOUT = {"cam_b": ["x9.jpg", "day1/deep/er/IMG_0001.JPEG"], "cam_a": ["zz.PNG", "a/b.bmp"],
          "cam_c": ["1.jpg"]}


def test_folder_layout_any_depth_names_and_case_with_sorted_camera_ids(tmp_path):
    cameras(tmp_path, LAYOUT)
    ds = CameraFolders(root="unused", source=str(tmp_path))
    assert ds.cameras == {"cam_a": 0, "cam_b": 1, "cam_c": 2}
    got = {(os.path.relpath(p, tmp_path), cam) for p, _, cam in ds.train}
    assert got == {("cam_a/zz.PNG", "camerafolders_0"), ("cam_a/a/b.bmp", "camerafolders_0"),
                   ("cam_b/x9.jpg", "camerafolders_1"), ("cam_b/day1/deep/er/IMG_0001.JPEG", "camerafolders_1"),
                   ("cam_c/1.jpg", "camerafolders_2")}
    pids = [pid for _, pid, _ in ds.train]
    assert len(set(pids)) == len(pids) == 5, "one unique pid per image: no identity is implied"
    assert ds.query == [] and ds.gallery == []
    assert CameraFolders.has_identities is False
    # the listing, not the file system, fixes the order
    assert [p for p, _, _ in ds.train] == [p for p, _, _ in CameraFolders(source=str(tmp_path)).train]


def test_default_source_is_camera_folders_under_the_dataset_root(tmp_path):
    cameras(tmp_path / "camera_folders", {"c1": ["a.jpg"], "c2": ["b.jpg"]})
    assert len(CameraFolders(root=str(tmp_path)).train) == 2
    assert "CameraFolders" in DATASET_REGISTRY._obj_map


def test_camera_ids_follow_sorted_names_not_listing_order():
    entries = [("p1", "north"), ("p2", "east"), ("p3", None), ("p4", "north")]
    assert camera_index(entries) == {"east": 0, "north": 1}


def test_missing_root(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"CameraFolders: .*nope not found\. Set "
                                                   r"UNSUP\.DATA\.CAMERA_FOLDERS"):
        CameraFolders(source=str(tmp_path / "nope"))


def test_empty_root_and_camera_folders_without_images(tmp_path, caplog):
    with pytest.raises(DatasetFormatError, match="no images in .*Expected <root>/<camera>/"):
        CameraFolders(source=str(tmp_path))
    (tmp_path / "cam1").mkdir()
    (tmp_path / "cam1" / ".DS_Store").write_bytes(b"x")
    with caplog.at_level(logging.WARNING), pytest.raises(DatasetFormatError, match="no images"):
        CameraFolders(source=str(tmp_path))
    assert "cam1 holds no images; ignored" in caplog.text


def test_images_directly_in_the_root_stop_with_the_fix(tmp_path):
    cameras(tmp_path, {"cam1": ["a.jpg"]})
    loose = [image(tmp_path / f"loose{i}.jpg") for i in range(7)]
    with pytest.raises(DatasetFormatError) as e:
        CameraFolders(source=str(tmp_path))
    msg = str(e.value)
    assert "7 image(s) directly in" in msg and "Move them into <root>/<camera>/" in msg
    assert loose[4] in msg and loose[5] not in msg and msg.endswith("path,camera header.")
    # without cameras required (the tools), they are kept with an unknown camera
    entries = list_images(str(tmp_path))
    assert sum(cam is None for _, cam in entries) == 7 and ("cam1" in {c for _, c in entries})


def test_non_image_files_are_listed_and_skipped_clutter_silently(tmp_path, caplog):
    cameras(tmp_path, {"cam1": ["a.jpg"], "cam2": ["b.jpg"]})
    for name in ("cam1/notes.txt", "cam2/sub/video.mp4", "cam2/Thumbs.db", "cam1/.DS_Store", "readme.md"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"not an image")
    with caplog.at_level(logging.WARNING):
        ds = CameraFolders(source=str(tmp_path))
    assert len(ds.train) == 2
    warning = [r.getMessage() for r in caplog.records if "not images" in r.getMessage()]
    assert len(warning) == 1 and warning[0].startswith("skipped 3 file(s)")
    assert "notes.txt" in warning[0] and "video.mp4" in warning[0] and "readme.md" in warning[0]
    assert "Thumbs.db" not in warning[0] and ".DS_Store" not in warning[0]


def test_single_camera_warns_once_and_trains(tmp_path, caplog):
    cameras(tmp_path, {"only": ["a.jpg", "b.jpg"]})
    with caplog.at_level(logging.WARNING):
        ds = CameraFolders(source=str(tmp_path))
    assert {cam for _, _, cam in ds.train} == {"camerafolders_0"}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "one camera only" in warnings[0] and "O2CAP" in warnings[0]


# ---- CSV ---------------------------------------------------------------------------------------

def write_csv(path, text):
    path.write_text(text)
    return str(path)


def test_csv_relative_paths_resolve_against_the_csv_folder(tmp_path, monkeypatch):
    image(tmp_path / "imgs" / "a.jpg")
    image(tmp_path / "imgs" / "deep" / "b.png")
    other = image(tmp_path.parent / f"{tmp_path.name}_abs" / "c.jpg")
    csv = write_csv(tmp_path / "list.csv", f"path,camera\nimgs/a.jpg,gate\nimgs/deep/b.png, lobby \n\n{other},gate\n")
    monkeypatch.chdir(tmp_path.parent)  # relative to the CSV, not to the working directory
    ds = CameraFolders(source=csv)
    assert ds.cameras == {"gate": 0, "lobby": 1}
    assert sorted((os.path.basename(p), cam) for p, _, cam in ds.train) == [
        ("a.jpg", "camerafolders_0"), ("b.png", "camerafolders_1"), ("c.jpg", "camerafolders_0")]


def test_csv_missing_columns(tmp_path):
    with pytest.raises(DatasetFormatError, match=r"no camera column \(header: path\)"):
        CameraFolders(source=write_csv(tmp_path / "a.csv", "path\nx.jpg\n"))
    with pytest.raises(DatasetFormatError, match="no path and no camera column"):
        CameraFolders(source=write_csv(tmp_path / "b.csv", "file,cam\nx.jpg,1\n"))
    with pytest.raises(DatasetFormatError, match=r"header: empty"):
        CameraFolders(source=write_csv(tmp_path / "c.csv", ""))
    # the tools read a CSV without cameras
    image(tmp_path / "x.jpg")
    assert list_images(write_csv(tmp_path / "d.csv", "path\nx.jpg\n")) == [(str(tmp_path / "x.jpg"), None)]


def test_csv_missing_files_are_counted_and_named(tmp_path):
    image(tmp_path / "ok.jpg")
    rows = "".join(f"gone{i}.jpg,c\n" for i in range(6))
    with pytest.raises(DatasetNotFoundError) as e:
        CameraFolders(source=write_csv(tmp_path / "l.csv", "path,camera\nok.jpg,c\n" + rows))
    msg = str(e.value)
    assert "6 listed file(s) do not exist" in msg and "gone4.jpg" in msg and "gone5.jpg" not in msg


def test_csv_bad_rows_name_their_lines(tmp_path):
    image(tmp_path / "ok.jpg")
    text = "path,camera\nok.jpg,c\nok.jpg\n,c\nok.jpg,\nnotes.txt,c\n"
    with pytest.raises(DatasetFormatError) as e:
        CameraFolders(source=write_csv(tmp_path / "l.csv", text))
    msg = str(e.value)
    assert "4 bad row(s): line 3, line 4, line 5, line 6 (not an image: notes.txt)" in msg


def test_a_glob_or_a_missing_csv_is_not_a_training_source(tmp_path):
    with pytest.raises(DatasetFormatError, match="a glob carries no cameras"):
        CameraFolders(source=str(tmp_path / "*.jpg"))
    with pytest.raises(DatasetNotFoundError):
        CameraFolders(source=str(tmp_path / "missing.csv"))


def test_list_images_glob_recurses_and_flat_folder_has_no_cameras(tmp_path):
    a = image(tmp_path / "a.jpg")
    b = image(tmp_path / "x" / "y" / "b.JPG")
    (tmp_path / "x" / "c.txt").write_text("")
    assert list_images(str(tmp_path / "**" / "*")) == [(a, None), (b, None)]
    with pytest.raises(DatasetNotFoundError, match="matches no images"):
        list_images(str(tmp_path / "*.png"))
    with pytest.raises(DatasetFormatError, match="not a folder, a glob or a .csv"):
        list_images(a)


# ---- trainer glue: config key, corrupt images, no NMI / ARI on fake ids -----------------------

def cfg_for(source, **unsup):
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.DATASETS.NAMES = ("CameraFolders",)
    cfg.UNSUP.DATA.CAMERA_FOLDERS = str(source)
    for key, value in unsup.items():
        setattr(cfg.UNSUP, key, value)
    return cfg


def test_load_train_items_reads_the_config_key_and_applies_the_corrupt_image_policy(tmp_path):
    cameras(tmp_path, {"c1": ["a.jpg", "b.jpg"], "c2": ["c.jpg"]})
    (tmp_path / "c2" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(UserInputError, match="1 unreadable or corrupt train image.*broken.jpg"):
        load_train_items(cfg_for(tmp_path))
    items = load_train_items(cfg_for(tmp_path, CORRUPT_IMAGES="skip"))
    assert sorted(os.path.basename(p) for p, _, _ in items) == ["a.jpg", "b.jpg", "c.jpg"]


def test_label_statistics_are_off_when_a_train_dataset_has_no_identities(tmp_path):
    cfg = cfg_for(tmp_path)
    assert not train_has_identities(cfg)
    cfg.DATASETS.NAMES = ("DemoMarket",)
    assert train_has_identities(cfg)
    cfg.DATASETS.NAMES = ("DemoMarket", "CameraFolders")
    assert not train_has_identities(cfg)


def test_clustering_hook_keeps_no_true_ids_without_identities(tmp_path):
    from dcmip.engine.hooks import ClusteringHook

    cfg = cfg_for(tmp_path)
    items = [(f"p{i}", f"camerafolders_image{i}", f"camerafolders_{i % 2}") for i in range(4)]
    assert ClusteringHook(cfg, items, label_stats=False).true_ids is None
    assert ClusteringHook(cfg, items).true_ids is not None  # labelled datasets keep their statistics


def test_camera_folders_cannot_be_a_test_set(tmp_path):
    import argparse

    from dcmip.engine.defaults import load_cfg

    args = argparse.Namespace(config_file="", opts=["DATASETS.TESTS", '("CameraFolders",)',
                                                    "MODEL.BACKBONE.PRETRAIN", "False"], eval_only=False)
    with pytest.raises(UserInputError, match="DATASETS.TESTS: CameraFolders has no identities"):
        load_cfg(args)


def test_images_of_any_mode_reach_the_model_as_rgb(tmp_path):
    """RGBA / grey+alpha / palette PNGs and palette BMPs (dcmip.compat "Image modes"): 3
    channels with their real colours, through fastreid's loaders and the trainer's."""
    from fastreid.data.common import CommDataset
    from fastreid.data.transforms import build_transforms

    from dcmip.data.pseudo_dataset import read_image as trainer_read_image

    red = (200, 10, 10)
    Image.new("RGBA", (8, 16), red + (100,)).save(tmp_path / "rgba.png")
    Image.new("LA", (8, 16), (90, 255)).save(tmp_path / "la.png")
    palette = Image.new("P", (8, 16), 1)
    palette.putpalette([0, 0, 0, *red] + [0] * 762)
    palette.save(tmp_path / "p.png")
    palette.save(tmp_path / "p.bmp")
    image(tmp_path / "rgb.jpg", color=red)
    cfg = get_cfg()
    cfg.INPUT.SIZE_TEST = [16, 8]
    items = [(str(tmp_path / n), 0, 0) for n in ("rgba.png", "la.png", "p.png", "p.bmp", "rgb.jpg")]
    batch = [CommDataset(items, build_transforms(cfg, is_train=False), relabel=False)[i]["images"]
             for i in range(len(items))]
    assert all(t.shape == (3, 16, 8) for t in batch)
    for t in (batch[0], batch[2], batch[3]):
        assert t[:, 8, 4].tolist() == list(red)
    assert batch[1][:, 8, 4].tolist() == [90, 90, 90]
    assert abs(batch[4][:, 8, 4] - torch.tensor(red)).max() <= 8  # JPEG, as before
    assert trainer_read_image(items[0][0]).mode == "RGB"
