"""Issue 13's two-camera protocol: MarketSplit restricted to cameras (kwarg / environment /
MarketSplitTwoCameras), the strong-shift two-camera demo set (DemoTwoCameras) and the camera
shift statistics that chose the pair."""
import json

import numpy as np
import pytest
from PIL import Image

from dcmip.data import demo  # imports dcmip first: its compat layer lets fastreid import
from dcmip.data.camera_shift import average_precision, colour_histogram, pair_statistics
from dcmip.data.datasets import DemoTwoCameras, MarketSplit, MarketSplitTwoCameras
from fastreid.data.datasets import DATASET_REGISTRY
from test_datasets import check_split

SMALL = dict(num_train_ids=8, num_test_ids=6, num_cams=3, cams_per_id=(2, 3), images_per_cam=(2, 3))
ENV = ("DCMIP_MARKET_SPLIT_DIR", "DCMIP_MARKET_SPLIT_TRAIN_IDS", "DCMIP_MARKET_SPLIT_SEED",
       "DCMIP_MARKET_SPLIT_CAMERAS")


@pytest.fixture(autouse=True)
def no_split_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("two_camera")
    demo.generate_demo_dataset(root / "demo-market", seed=0, **SMALL)
    return str(root / "demo-market" / "bounding_box_train")


def test_cameras_restrict_the_split_of_all_cameras(folder):
    """Same identity split as all cameras; the kept cameras' images, nothing else; every query
    has a match in the other kept camera."""
    every = MarketSplit(root="unused", split_dir=folder, num_train_ids=5, seed=1)
    two = MarketSplit(root="unused", split_dir=folder, num_train_ids=5, seed=1, cameras=(2, 3))
    assert two.cameras == (2, 3)
    assert two.train == [item for item in every.train if item[2] in ("marketsplit_1", "marketsplit_2")]
    assert sorted(two.query + two.gallery) == sorted(i for i in every.query + every.gallery if i[2] in (1, 2))
    train_ids, test_ids = check_split(two)
    assert train_ids and {cam for _, _, cam in two.query} == {1, 2}
    # Every test identity seen by both cameras gives one query per camera.
    both = {pid for pid in test_ids if {c for _, p, c in two.gallery + two.query if p == pid} == {1, 2}}
    assert sorted(pid for _, pid, _ in two.query) == sorted(2 * list(both))


def test_cameras_from_the_environment_and_bad_values(folder, monkeypatch):
    monkeypatch.setenv("DCMIP_MARKET_SPLIT_CAMERAS", "3,2")
    ds = MarketSplit(root="unused", split_dir=folder, num_train_ids=5)
    assert ds.cameras == (2, 3)
    assert ds.train == MarketSplit(root="unused", split_dir=folder, num_train_ids=5, cameras=[2, 3]).train
    monkeypatch.setenv("DCMIP_MARKET_SPLIT_CAMERAS", "c2,c3")
    with pytest.raises(ValueError, match="DCMIP_MARKET_SPLIT_CAMERAS='c2,c3' must be comma-separated"):
        MarketSplit(root="unused", split_dir=folder, num_train_ids=5)
    monkeypatch.delenv("DCMIP_MARKET_SPLIT_CAMERAS")
    for cameras in ((2,), (2, 2), (1, 7)):
        with pytest.raises(ValueError, match=r"two distinct 1-based cameras of the folder, which has \[1, 2, 3\]"):
            MarketSplit(root="unused", split_dir=folder, num_train_ids=5, cameras=cameras)


def test_two_camera_dataset_defaults_to_the_chosen_pair(folder, monkeypatch):
    assert DATASET_REGISTRY.get("MarketSplitTwoCameras") is MarketSplitTwoCameras
    with pytest.raises(ValueError, match=r"MarketSplitTwoCameras: cameras \[5, 6\]"):
        MarketSplitTwoCameras(root="unused", split_dir=folder, num_train_ids=5)
    monkeypatch.setenv("DCMIP_MARKET_SPLIT_CAMERAS", "1,3")
    ds = MarketSplitTwoCameras(root="unused", split_dir=folder, num_train_ids=5)
    assert ds.cameras == (1, 3) and {cam for _, _, cam in ds.query + ds.gallery} <= {0, 2}
    assert all(pid.startswith("marketsplit2cam_") for _, pid, _ in ds.train)


def test_two_camera_split_of_the_real_market_images(tmp_path):
    if not MarketSplit._shared_dir.is_dir():
        pytest.skip(f"real Market-1501 training images not found at {MarketSplit._shared_dir}")
    ds = MarketSplitTwoCameras(root=str(tmp_path))
    every = MarketSplit(root=str(tmp_path))
    train_ids, test_ids = check_split(ds)
    assert {int(p.split("_")[-1]) for _, p, _ in every.train} >= train_ids
    assert {cam for _, _, cam in ds.query + ds.gallery} == {4, 5}
    assert {c for _, _, c in ds.train} == {"marketsplit2cam_4", "marketsplit2cam_5"}
    assert len(ds.query) > 100


def test_strong_two_camera_demo_set(tmp_path):
    """Cameras at opposite ends; the distance between the two cameras' mean image colours is
    much larger than between two normal cameras; DemoTwoCameras reads the folder."""
    with pytest.raises(ValueError, match="camera_shift='huge'"):
        demo.sample_camera(0, 0, "huge")
    strong = [demo.sample_camera(0, c, "strong") for c in range(2)]
    assert strong[0].brightness < strong[1].brightness and strong[0].saturation < strong[1].saturation
    assert strong[0].gains[2] < strong[0].gains[0] and strong[1].gains[2] > strong[1].gains[0]
    assert strong[0].background != strong[1].background
    assert demo.sample_camera(3, 1, "strong") == demo.sample_camera(3, 1, "strong")
    args = dict(num_train_ids=3, num_test_ids=2, num_cams=2, cams_per_id=(2, 2), images_per_cam=(2, 2))
    distance = {}
    for shift in ("normal", "strong"):
        root = tmp_path / shift / "demo-two-cameras"
        counts = demo.generate_demo_dataset(root, seed=0, camera_shift=shift, **args)
        assert counts["cameras"] == 2
        assert json.loads((root / "demo_params.json").read_text())["params"].get("camera_shift") == (
            None if shift == "normal" else "strong")
        ds = DemoTwoCameras(root=str(tmp_path / shift))
        items = ds.query + ds.gallery
        colour = np.stack([np.asarray(Image.open(p), np.float64).mean(axis=(0, 1)) for p, _, _ in items])
        cams = np.array([c for _, _, c in items])
        distance[shift] = np.linalg.norm(colour[cams == 0].mean(0) - colour[cams == 1].mean(0))
    assert distance["strong"] > 2 * distance["normal"]


def test_colour_histogram_and_average_precision_known_cases():
    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (255, 0, 0)
    hist = colour_histogram(image, bins=2)
    assert hist[0] == 0.75 and hist[4] == 0.25 and hist.sum() == 1
    # Matches at ranks 1 and 3: AP = (1/1 + 2/3) / 2.
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.1]), np.array([True, False, True, False])) == \
        pytest.approx((1 + 2 / 3) / 2)


def test_pair_statistics_known_case():
    """Two cameras, identities 1 (two images in each camera) and 2 (one image in camera 1):
    gap, cross-camera AP, domain shift and colour distance by hand."""
    a, b, c = np.eye(3)
    u = (a + b) / np.sqrt(2)
    features = np.stack([a, a, u, u, c])  # pid 1: cam 0 a, a; cam 1 u, u. pid 2: cam 1 c
    pids, cams = np.array([1, 1, 1, 1, 2]), np.array([0, 0, 1, 1, 1])
    hist = np.array([[1, 0], [1, 0], [0, 1], [0, 1], [0, 1]], float)
    (row,) = pair_statistics(features, hist, pids, cams)
    assert row["cameras"] == (0, 1) and row["shared_ids"] == 1
    assert row["gap"] == pytest.approx(1 - 1 / np.sqrt(2))  # within 1, across cos 45°
    # Camera 0's queries rank u, u above c (AP 1); camera 1's query a, a are its only images.
    assert row["cross_map"] == pytest.approx(1.0)
    mean_b = (2 * u + c) / 3
    assert row["domain"] == pytest.approx(1 - a @ mean_b / np.linalg.norm(mean_b))
    assert row["colour"] == pytest.approx(1.0)
