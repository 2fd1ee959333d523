"""Market-format datasets: the folder parser, DemoMarket and the MarketSplit identity split."""
import os
from collections import defaultdict

import pytest

from dcmip.data import demo  # imports dcmip first: its compat layer lets fastreid import
from dcmip.data.datasets import (DemoMarket, MarketSplit, parse_market_folder,
                                 split_identities)
from fastreid.data.datasets import DATASET_REGISTRY

SMALL = dict(num_train_ids=8, num_test_ids=4, num_cams=4, cams_per_id=(2, 3),
             images_per_cam=(2, 3))
SPLIT_ENV = ("DCMIP_MARKET_SPLIT_DIR", "DCMIP_MARKET_SPLIT_TRAIN_IDS", "DCMIP_MARKET_SPLIT_SEED")


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """A FASTREID_DATASETS-like root holding a small generated ``demo-market``."""
    root = tmp_path_factory.mktemp("datasets")
    counts = demo.generate_demo_dataset(root / "demo-market", seed=0, **SMALL)
    return root, counts


@pytest.fixture(autouse=True)
def no_split_env(monkeypatch):
    for name in SPLIT_ENV:
        monkeypatch.delenv(name, raising=False)


def touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def check_split(ds):
    """Invariants of a query / gallery split; returns (train ids, test ids)."""
    train_ids = {int(pid.split("_")[-1]) for _, pid, _ in ds.train}
    query_keys = [(pid, cam) for _, pid, cam in ds.query]
    assert len(query_keys) == len(set(query_keys)), "one query per identity and camera"
    gallery = defaultdict(set)
    for _, pid, cam in ds.gallery:
        gallery[pid].add(cam)
    for pid, cam in query_keys:
        assert gallery[pid] - {cam}, f"query {pid}/c{cam + 1} has no cross-camera gallery match"
    test_ids = {pid for pid in gallery if pid > 0} | {pid for pid, _ in query_keys}
    assert train_ids.isdisjoint(test_ids)
    paths = [p for p, _, _ in ds.train + ds.query + ds.gallery]
    assert len(paths) == len(set(paths))
    return train_ids, test_ids


# ---- parse_market_folder -------------------------------------------------------------------

def test_parser_reads_ids_and_zero_based_cameras(tmp_path):
    touch(tmp_path, "0002_c1s1_000451_03.jpg", "0002_c6s2_000001_01.JPG", "0010_c3s1_000002_01.png",
          "0011_c2s1_000003_01.jpeg", "0000_c1s1_000004_01.jpg", "-1_c2s1_000005_01.jpg",
          "Thumbs.db", "notes.txt")
    items = parse_market_folder(tmp_path)
    assert [(os.path.basename(p), pid, cam) for p, pid, cam in items] == [
        ("0000_c1s1_000004_01.jpg", 0, 0),       # distractor kept
        ("0002_c1s1_000451_03.jpg", 2, 0),
        ("0002_c6s2_000001_01.JPG", 2, 5),
        ("0010_c3s1_000002_01.png", 10, 2),
        ("0011_c2s1_000003_01.jpeg", 11, 1),
    ]  # junk (-1) dropped, non-images ignored, sorted by name
    assert all(os.path.dirname(p) == str(tmp_path) for p, _, _ in items)


def test_parser_missing_folder_names_it_and_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        parse_market_folder(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)
    assert "FASTREID_DATASETS" in str(e.value) and "datasets/README.md" in str(e.value)


def test_parser_empty_folder(tmp_path):
    touch(tmp_path, "Thumbs.db")
    with pytest.raises(ValueError, match="holds no images"):
        parse_market_folder(tmp_path)


def test_parser_lists_the_first_five_bad_names(tmp_path):
    bad = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "0001_c0s1_000001_01.jpg"]
    touch(tmp_path, "0001_c1s1_000001_01.jpg", *bad)
    with pytest.raises(ValueError) as e:
        parse_market_folder(tmp_path)
    message = str(e.value)
    assert "7 of the 8 images" in message and "PPPP_cCsS_FFFFFF_BB" in message
    shown = sorted(bad)[:5]
    assert all(name in message for name in shown)
    assert not any(name in message for name in sorted(bad)[5:])


# ---- DemoMarket ----------------------------------------------------------------------------

def test_demo_market_is_registered_and_reads_the_generated_data(datasets_root):
    root, counts = datasets_root
    assert DATASET_REGISTRY.get("DemoMarket") is DemoMarket
    ds = DemoMarket(root=str(root))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (
        counts["train_images"], counts["query_images"], counts["gallery_images"])
    _, pid, cam = ds.train[0]
    assert pid == "demomarket_1" and cam.startswith("demomarket_")  # fastreid's convention
    assert all(isinstance(pid, int) and isinstance(cam, int) for _, pid, cam in ds.gallery)
    train_ids, test_ids = check_split(ds)
    assert train_ids == set(range(1, 9)) and test_ids == set(range(9, 13))
    assert ds.get_num_cams(ds.train) == SMALL["num_cams"]


def test_demo_market_missing_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        DemoMarket(root=str(tmp_path))
    assert str(tmp_path / "demo-market") in str(e.value) and "make demo-data" in str(e.value)


def test_demo_market_missing_subfolder(tmp_path):
    touch(tmp_path / "demo-market" / "bounding_box_train", "0001_c1s1_000001_01.jpg")
    with pytest.raises(FileNotFoundError, match="query"):
        DemoMarket(root=str(tmp_path))


# ---- MarketSplit ---------------------------------------------------------------------------

def test_market_split_on_a_small_folder(datasets_root):
    root, _ = datasets_root
    folder = str(root / "demo-market" / "bounding_box_train")
    ds = MarketSplit(root=str(root), split_dir=folder, num_train_ids=5, seed=0)
    assert DATASET_REGISTRY.get("MarketSplit") is MarketSplit
    train_ids, test_ids = check_split(ds)
    assert len(train_ids) == 5 and len(test_ids) == 3
    assert train_ids | test_ids == set(range(1, 9))
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == len(os.listdir(folder))
    # Every test (identity, camera) gives exactly one query: demo identities have >= 2 images
    # per camera, so no camera has to be kept for the gallery.
    test_keys = {(pid, cam) for _, pid, cam in ds.gallery}
    assert {(pid, cam) for _, pid, cam in ds.query} == test_keys
    assert all(pid.startswith("marketsplit_") for _, pid, _ in ds.train)


def test_market_split_is_deterministic_and_seeded(datasets_root):
    root, _ = datasets_root
    folder = str(root / "demo-market" / "bounding_box_train")
    a = MarketSplit(root=str(root), split_dir=folder, num_train_ids=4, seed=0)
    b = MarketSplit(root=str(root), split_dir=folder, num_train_ids=4, seed=0)
    assert (a.train, a.query, a.gallery) == (b.train, b.query, b.gallery)
    others = [MarketSplit(root=str(root), split_dir=folder, num_train_ids=4, seed=s)
              for s in (1, 2, 3)]
    assert any({p for _, p, _ in o.train} != {p for _, p, _ in a.train} for o in others)


def test_market_split_reads_environment_variables(datasets_root, monkeypatch):
    root, _ = datasets_root
    monkeypatch.setenv("DCMIP_MARKET_SPLIT_DIR", str(root / "demo-market" / "bounding_box_train"))
    monkeypatch.setenv("DCMIP_MARKET_SPLIT_TRAIN_IDS", "6")
    monkeypatch.setenv("DCMIP_MARKET_SPLIT_SEED", "3")
    ds = MarketSplit(root="unused")
    assert (ds.num_train_ids, ds.seed) == (6, 3)
    assert len(check_split(ds)[0]) == 6
    monkeypatch.setenv("DCMIP_MARKET_SPLIT_SEED", "three")
    with pytest.raises(ValueError, match="DCMIP_MARKET_SPLIT_SEED"):
        MarketSplit(root="unused")


def test_market_split_needs_test_identities(datasets_root):
    root, _ = datasets_root
    folder = str(root / "demo-market" / "bounding_box_train")
    with pytest.raises(ValueError, match="8 identities"):
        MarketSplit(root=str(root), split_dir=folder, num_train_ids=8)


def test_market_split_without_data_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setattr(MarketSplit, "_shared_dir", tmp_path / "shared" / "bounding_box_train")
    with pytest.raises(FileNotFoundError) as e:
        MarketSplit(root=str(tmp_path))
    message = str(e.value)
    assert str(tmp_path / "market1501-train" / "bounding_box_train") in message
    assert str(tmp_path / "shared" / "bounding_box_train") in message
    assert "DCMIP_MARKET_SPLIT_DIR" in message


def test_split_keeps_a_cross_camera_match_for_every_query():
    def item(pid, cam, k):
        return (f"{pid:04d}_c{cam + 1}s1_{k:06d}_01.jpg", pid, cam)
    distractor = item(0, 3, 20)
    items = ([item(1, 0, 1), item(1, 1, 2), item(1, 2, 3)]          # three single-image cameras
             + [item(2, 0, 4), item(2, 1, 5), item(2, 1, 6)]        # a single and a pair
             + [item(3, 0, 7), item(3, 0, 8)]                       # one camera only
             + [item(4, c, 9 + 2 * c + k) for c in range(2) for k in range(2)]  # two pairs
             + [item(5, 0, 21), item(5, 1, 22)] + [distractor])
    expected_queries = {1: 2, 2: 1, 3: 0, 4: 2, 5: 1}
    for seed in range(5):
        train, query, gallery = split_identities(items, num_train_ids=1, seed=seed)
        check_split(type("Split", (), {"train": [(p, f"x_{i}", c) for p, i, c in train],
                                       "query": query, "gallery": gallery}))
        assert distractor in gallery
        test_ids = {pid for _, pid, _ in query + gallery if pid > 0}
        assert len(test_ids) == 4
        for pid in test_ids:
            assert sum(q == pid for _, q, _ in query) == expected_queries[pid]


REAL = MarketSplit._shared_dir


def test_market_split_on_the_real_market_training_images(tmp_path):
    if not REAL.is_dir():
        pytest.skip(f"real Market-1501 training images not found at {REAL}")
    ds = MarketSplit(root=str(tmp_path))  # no <root>/market1501-train: falls back to REAL
    assert ds.split_dir == str(REAL)
    train_ids, test_ids = check_split(ds)
    assert (len(train_ids), len(test_ids)) == (500, 251)
    assert len(ds.train) + len(ds.query) + len(ds.gallery) == 12936
    assert ds.get_num_cams(ds.train) == 6 and ds.get_num_cams(ds.query) == 6
    again = MarketSplit(root=str(tmp_path))
    assert again.query == ds.query
