"""MSMT17TrainVal (issue 12 item 3) on a tiny fake MSMT17 layout."""
import logging

import pytest
from PIL import Image

import dcmip  # noqa: F401
from dcmip.registry import DatasetFormatError, DatasetNotFoundError
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.msmt17 import VERSION_DICT


def fake_msmt17(root, version="MSMT17_V1", train=6, val=3, query=2, gallery=4):
    """``<root>/<version>`` with ``train/``, ``test/`` and the four lists; image names follow
    MSMT17 (``<pid>_<seq>_<camera>_<time>_<frame>_<box>.jpg``)."""
    base = root / version
    train_dir, test_dir = VERSION_DICT[version]["train_dir"], VERSION_DICT[version]["test_dir"]
    lists = {"train": (train_dir, train, 0), "val": (train_dir, val, 100), "query": (test_dir, query, 0),
             "gallery": (test_dir, gallery, 200)}
    for name, (folder, count, offset) in lists.items():
        lines = []
        for i in range(count):
            pid, cam = i % 3, 1 + (i + offset) % 15
            rel = f"{pid:04d}/{pid:04d}_{offset + i:03d}_{cam:02d}_0303morning_{i:04d}_0.jpg"
            path = base / folder / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 16)).save(path)
            lines.append(f"{rel} {pid}\n")
        (base / f"list_{name}.txt").write_text("".join(lines))
    return base


def test_train_holds_train_and_val_lists(tmp_path, caplog):
    fake_msmt17(tmp_path)
    with caplog.at_level(logging.INFO, logger="dcmip.data.msmt17"):
        dataset = DATASET_REGISTRY.get("MSMT17TrainVal")(root=str(tmp_path))
    plain = DATASET_REGISTRY.get("MSMT17")(root=str(tmp_path))
    assert len(plain.train) == 6 and len(dataset.train) == 9
    assert dataset.train[:6] == plain.train
    assert {path.split("/")[-1].split("_")[1] for path, _, _ in dataset.train[6:]} == {"100", "101", "102"}
    # Same identity space (val images are of the train identities), prefixed as fastreid does.
    assert {pid for _, pid, _ in dataset.train} == {"msmt17_0", "msmt17_1", "msmt17_2"}
    assert dataset.train[6][2] == "msmt17_" + str((0 + 100) % 15)  # camera 101 % 15 + 1, 0-based
    assert dataset.query == plain.query and dataset.gallery == plain.gallery
    assert dataset.data == dataset.train
    assert "train = list_train + list_val (9 images) = 6 + 3" in caplog.text


def test_combineall_does_not_move_the_test_set_into_train(tmp_path):
    fake_msmt17(tmp_path, version="MSMT17_V2")
    dataset = DATASET_REGISTRY.get("MSMT17TrainVal")(root=str(tmp_path), combineall=True)
    assert len(dataset.train) == 9


def test_missing_folder_and_lists_are_named(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="MSMT17_V1.*list_val.txt"):
        DATASET_REGISTRY.get("MSMT17TrainVal")(root=str(tmp_path))
    base = fake_msmt17(tmp_path)
    (base / "list_val.txt").unlink()
    with pytest.raises(DatasetFormatError, match="lacks list_val.txt"):
        DATASET_REGISTRY.get("MSMT17TrainVal")(root=str(tmp_path))
    (base / "list_val.txt").write_text("")
    (base / "test").rename(base / "elsewhere")
    with pytest.raises(DatasetFormatError, match="lacks test/"):
        DATASET_REGISTRY.get("MSMT17TrainVal")(root=str(tmp_path))
