"""The demo dataset generator: determinism, Market-1501 layout, identity / camera structure."""
import json
import os
import re
import subprocess
import sys
from collections import defaultdict

import pytest
from PIL import Image

from dcmip.data import demo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = re.compile(r"^(\d{4})_c(\d)s1_(\d{6})_(\d{2})\.jpg$")
# Small enough to make in a fraction of a second.
SMALL = dict(num_train_ids=6, num_test_ids=4, num_cams=4, cams_per_id=(2, 3),
             images_per_cam=(2, 3))


def files(root):
    """{subset: {file name: bytes}}."""
    return {s: {n: open(os.path.join(root, s, n), "rb").read()
                for n in sorted(os.listdir(os.path.join(root, s)))} for s in demo.SUBSETS}


def parsed(root, subset):
    """[(pid, cam)] of a subset, from the file names."""
    return [(int(m.group(1)), int(m.group(2)))
            for m in map(NAME.match, sorted(os.listdir(os.path.join(root, subset))))]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    counts = demo.generate_demo_dataset(root, seed=0, **SMALL)
    return root, counts


def test_same_seed_gives_identical_files(small, tmp_path):
    root, counts = small
    again = demo.generate_demo_dataset(tmp_path / "again", seed=0, **SMALL)
    assert again == counts
    assert files(tmp_path / "again") == files(root)


def test_different_seed_gives_different_data(small, tmp_path):
    root, _ = small
    demo.generate_demo_dataset(tmp_path / "other", seed=1, **SMALL)
    a, b = files(root), files(tmp_path / "other")
    assert a["bounding_box_train"] != b["bounding_box_train"]
    # Not just different names: the pixels of every identity differ too.
    assert set(a["bounding_box_train"].values()).isdisjoint(b["bounding_box_train"].values())


def test_market_layout_and_names(small):
    root, counts = small
    assert sorted(p for p in os.listdir(root) if (root / p).is_dir()) == sorted(demo.SUBSETS)
    for subset in demo.SUBSETS:
        names = os.listdir(root / subset)
        assert names and all(NAME.match(n) for n in names), names[:5]
        for pid, cam in parsed(root, subset):
            assert 1 <= pid <= SMALL["num_train_ids"] + SMALL["num_test_ids"]
            assert 1 <= cam <= SMALL["num_cams"]
    with Image.open(next((root / "query").iterdir())) as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")
        assert im.size == (demo.IMAGE_WIDTH, demo.IMAGE_HEIGHT)
    assert counts == {"train_ids": 6, "train_images": len(os.listdir(root / "bounding_box_train")),
                      "test_ids": 4, "query_images": len(os.listdir(root / "query")),
                      "gallery_images": len(os.listdir(root / "bounding_box_test")), "cameras": 4}


def test_train_and_test_identities_are_disjoint(small):
    root, _ = small
    train = {pid for pid, _ in parsed(root, "bounding_box_train")}
    query = {pid for pid, _ in parsed(root, "query")}
    gallery = {pid for pid, _ in parsed(root, "bounding_box_test")}
    assert train == set(range(1, 7))
    assert query == gallery == set(range(7, 11))


def test_every_identity_in_several_cameras_several_times(small):
    root, _ = small
    per_id_cam = defaultdict(int)
    for subset in demo.SUBSETS:
        for key in parsed(root, subset):
            per_id_cam[key] += 1
    cams = defaultdict(set)
    for (pid, cam), n in per_id_cam.items():
        assert 2 <= n <= 3
        cams[pid].add(cam)
    assert all(2 <= len(c) <= 3 for c in cams.values())


def test_query_is_one_image_per_test_identity_and_camera(small):
    root, _ = small
    query = parsed(root, "query")
    gallery = parsed(root, "bounding_box_test")
    assert len(query) == len(set(query))
    assert set(query) == set(gallery)  # every (id, camera) keeps gallery images too


def test_second_call_is_a_no_op_and_new_parameters_regenerate(tmp_path):
    root = tmp_path / "d"
    first = demo.generate_demo_dataset(root, **SMALL)
    marker = json.loads((root / demo.MARKER_NAME).read_text())
    assert marker["params"]["seed"] == 0 and marker["counts"] == first
    stamp = {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")}
    assert demo.generate_demo_dataset(root, **SMALL) == first
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.jpg")} == stamp

    more = demo.generate_demo_dataset(root, **{**SMALL, "num_test_ids": 5})
    assert more["test_ids"] == 5
    assert {pid for pid, _ in parsed(root, "query")} == set(range(7, 12))
    assert json.loads((root / demo.MARKER_NAME).read_text())["counts"] == more


def test_missing_files_are_regenerated(tmp_path):
    counts = demo.generate_demo_dataset(tmp_path, **SMALL)
    victim = next((tmp_path / "bounding_box_train").iterdir())
    victim.unlink()
    assert demo.generate_demo_dataset(tmp_path, **SMALL) == counts
    assert victim.exists()


def test_refuses_to_overwrite_data_it_did_not_make(tmp_path):
    (tmp_path / "query").mkdir()
    (tmp_path / "query" / "0001_c1s1_000001_01.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        demo.generate_demo_dataset(tmp_path, **SMALL)


@pytest.mark.parametrize("bad", [dict(num_cams=1, cams_per_id=(1, 1)), dict(cams_per_id=(1, 3)),
                                 dict(cams_per_id=(2, 5)), dict(images_per_cam=(1, 3)),
                                 dict(num_test_ids=0)])
def test_invalid_parameters_are_rejected(tmp_path, bad):
    with pytest.raises(ValueError):
        demo.generate_demo_dataset(tmp_path, **{**SMALL, **bad})
    assert not (tmp_path / demo.MARKER_NAME).exists()


def test_identity_does_not_depend_on_dataset_size():
    assert demo.sample_identity(0, 3) == demo.sample_identity(0, 3)
    assert demo.sample_identity(0, 3) != demo.sample_identity(1, 3)
    assert demo.sample_camera(0, 2) != demo.sample_camera(0, 3)


def test_cli_prints_counts(tmp_path):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "make_demo_data.py"), "--root",
         str(tmp_path / "cli"), "--seed", "1", "--num-train-ids", "2", "--num-test-ids", "2",
         "--num-cams", "3", "--cams-per-id", "2", "2", "--images-per-cam", "2", "2",
         "--preview", str(tmp_path / "preview.png")],
        capture_output=True, text=True, check=True).stdout
    counts = json.loads(out[:out.rindex("}") + 1])
    assert counts["train_images"] == 2 * 2 * 2 and counts["query_images"] == 2 * 2
    with Image.open(tmp_path / "preview.png") as im:
        assert im.size == (3 * (demo.IMAGE_WIDTH + 2), 8 * (demo.IMAGE_HEIGHT + 2))
