"""Datasets in Market-1501's folder format, registered in fastreid's ``DATASET_REGISTRY``.

* :class:`DemoMarket` -- the generated demo data (``<root>/demo-market``, see
  :mod:`dcmip.data.demo`).
* :class:`DemoTwoCameras` -- the generated two-camera demo set with a strong camera shift
  (``<root>/demo-two-cameras``).
* :class:`MarketSplit` -- a deterministic identity split of one folder of labelled images (by
  default Market-1501's training images): some identities for unsupervised training, the others
  for a query / gallery test.
* :class:`MarketSplitTwoCameras` -- the same split restricted to two cameras with a strong
  appearance shift (issue 13's two-camera protocol).
* :class:`MarketFormat` -- the base of both: any folder with Market's three sub-folders.

All follow fastreid's ``ImageDataset`` contract: ``train``, ``query`` and ``gallery`` are lists
of ``(img_path, pid, camid)`` with 0-based cameras. As in fastreid's own datasets, training
pids and camids are strings prefixed with the dataset name (so several datasets can be
combined); the prefixed pid still holds the true identity, which the unsupervised trainer uses
only for pseudo-label statistics (NMI / ARI), never for the loss. ``root`` is fastreid's
``FASTREID_DATASETS`` (default ``datasets``).
"""
import logging
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

from ..registry import DatasetFormatError, DatasetNotFoundError

__all__ = ["parse_market_folder", "split_identities", "MarketFormat", "DemoMarket", "DemoTwoCameras",
           "MarketSplit", "MarketSplitTwoCameras", "IMAGE_EXTENSIONS"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# PPPP_cCsS_FFFFFF_BB: person id (-1 = junk, 0 = distractor), camera, sequence, frame, box.
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s(\d+)_(\d+)_(\d+)$")

Item = Tuple[str, int, int]

_DEMO_HINT = ("Generate the demo data with `make demo-data` (or `python tools/make_demo_data.py "
              "--root <FASTREID_DATASETS>/demo-market`).")
_DATA_HINT = ("Point FASTREID_DATASETS at the folder that holds the dataset; datasets/README.md "
              "lists the expected layouts.")


def parse_market_folder(folder, hint: str = _DATA_HINT) -> List[Item]:
    """``(path, pid, camid)`` for every image in ``folder``, named ``PPPP_cCsS_FFFFFF_BB.jpg``.

    ``camid`` is 0-based (``c1`` -> 0). As in fastreid's Market1501, junk images (pid -1) are
    dropped and distractors (pid 0) are kept. Files that are not images (``.jpg``, ``.jpeg``,
    ``.png``, any case) are ignored, e.g. Market's ``Thumbs.db``. Items are sorted by file
    name, so the result does not depend on the file system's order.

    Raises:
        FileNotFoundError: ``folder`` does not exist; the message includes ``hint``.
        ValueError: ``folder`` holds no images, or image names outside the format (the count
            and the first five are listed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetNotFoundError(f"Image folder {folder} not found. {hint}")
    names = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not names:
        raise DatasetFormatError(f"Image folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
                         f"{hint}")
    items, bad, junk = [], [], 0
    for name in names:
        match = _MARKET_NAME.match(os.path.splitext(name)[0])
        if match is None:
            bad.append(name)
            continue
        pid, cam = int(match.group(1)), int(match.group(2))
        if pid == -1:
            junk += 1
            continue
        if pid < -1 or cam < 1:
            bad.append(name)
            continue
        items.append((str(folder / name), pid, cam - 1))
    if bad:
        raise DatasetFormatError(
            f"{len(bad)} of the {len(names)} images in {folder} are not named like Market-1501 "
            f"(PPPP_cCsS_FFFFFF_BB.jpg: person id, 1-based camera, sequence, frame, box), e.g. "
            f"{', '.join(bad[:5])}. Rename them or move them out of the folder.")
    if junk:
        logger.info("Skipped %d junk images (person id -1) in %s.", junk, folder)
    return items


def _prefixed(items: Sequence[Item], name: str) -> List[Tuple[str, str, str]]:
    """fastreid's training-item convention: dataset-prefixed string pids and camids."""
    return [(path, f"{name}_{pid}", f"{name}_{cam}") for path, pid, cam in items]


class MarketFormat(ImageDataset):
    """A dataset laid out like Market-1501: ``<root>/<dataset_dir>/{bounding_box_train, query,
    bounding_box_test}``. Subclasses set ``dataset_dir`` and ``dataset_name`` (and register
    themselves); ``hint`` is appended to missing-data errors to say how to get the data.
    """
    dataset_dir = ""
    dataset_name = "marketformat"
    hint = _DATA_HINT

    def __init__(self, root: str = "datasets", dataset_dir: Optional[str] = None, **kwargs):
        self.root = root
        self.data_dir = os.path.join(root, dataset_dir if dataset_dir is not None
                                     else self.dataset_dir)
        if not os.path.isdir(self.data_dir):
            raise DatasetNotFoundError(f"{type(self).__name__}: dataset folder {self.data_dir} not "
                                    f"found. {self.hint}")
        train = parse_market_folder(os.path.join(self.data_dir, "bounding_box_train"), self.hint)
        query = parse_market_folder(os.path.join(self.data_dir, "query"), self.hint)
        gallery = parse_market_folder(os.path.join(self.data_dir, "bounding_box_test"), self.hint)
        super().__init__(_prefixed(train, self.dataset_name), query, gallery, **kwargs)


@DATASET_REGISTRY.register()
class DemoMarket(MarketFormat):
    """The generated demo dataset, ``<root>/demo-market`` (defaults: 120 training identities,
    60 test identities, 6 cameras; see :func:`dcmip.data.demo.generate_demo_dataset`)."""
    dataset_dir = "demo-market"
    dataset_name = "demomarket"
    hint = _DEMO_HINT


@DATASET_REGISTRY.register()
class DemoTwoCameras(MarketFormat):
    """The generated two-camera demo set with a strong camera shift,
    ``<root>/demo-two-cameras`` (issue 13; :func:`dcmip.data.demo.generate_demo_dataset` with
    ``num_cams=2, camera_shift="strong"``)."""
    dataset_dir = "demo-two-cameras"
    dataset_name = "demotwocameras"
    hint = ("Generate it with `python tools/make_demo_data.py --root <FASTREID_DATASETS>/demo-two-cameras "
            "--num-cams 2 --camera-shift strong`.")


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise DatasetFormatError(f"Environment variable {name}={value!r} must be an integer.") from None


@DATASET_REGISTRY.register()
class MarketSplit(ImageDataset):
    """A seeded identity split of one folder of labelled Market-format images.

    The identities (pid >= 1) are shuffled with ``seed``: the first ``num_train_ids`` are the
    unsupervised training set (their labels are kept only for pseudo-label statistics), the
    rest are the test identities. For every test identity seen by at least two cameras, one
    image per camera (a seeded choice) is a query; all other test images are the gallery, as
    in Market-1501's own protocol. Every query keeps a match in another camera of the gallery:
    identities seen by one camera only give no queries, and where a single-image camera's
    image is needed as the only cross-camera match, that camera gives no query. Distractors
    (pid 0) go to the gallery.

    Arguments (keyword argument, else environment variable, else default):

    * ``split_dir`` / ``DCMIP_MARKET_SPLIT_DIR``: the folder of images. Default: the first
      that exists of ``<root>/market1501-train/bounding_box_train`` and the shared copy
      ``<repo>/../shared/data/market1501-train/bounding_box_train``.
    * ``num_train_ids`` / ``DCMIP_MARKET_SPLIT_TRAIN_IDS``: default 500 (of Market's 751, which
      leaves 251 test identities).
    * ``seed`` / ``DCMIP_MARKET_SPLIT_SEED``: default 0.
    * ``cameras`` / ``DCMIP_MARKET_SPLIT_CAMERAS`` (e.g. "5,6"): keep only these cameras,
      1-based as in the file names (``c5``, ``c6``). The identity split is the one of all
      cameras (the same train and test identities, restricted); queries are drawn among the
      kept cameras, so each has a match in the other kept camera. Default: every camera.
    """
    dataset_name = "marketsplit"
    default_cameras: Optional[Tuple[int, ...]] = None
    # projects/DCMIP/dcmip/data/datasets.py -> the repository root is four folders up.
    _repo_root = Path(__file__).resolve().parents[4]
    _shared_dir = _repo_root.parent / "shared" / "data" / "market1501-train" / "bounding_box_train"

    def __init__(self, root: str = "datasets", split_dir: Optional[str] = None,
                 num_train_ids: Optional[int] = None, seed: Optional[int] = None,
                 cameras: Optional[Sequence[int]] = None, **kwargs):
        self.root = root
        self.split_dir = self._find_split_dir(root, split_dir)
        self.num_train_ids = (num_train_ids if num_train_ids is not None
                              else _env_int("DCMIP_MARKET_SPLIT_TRAIN_IDS", 500))
        self.seed = seed if seed is not None else _env_int("DCMIP_MARKET_SPLIT_SEED", 0)
        items = parse_market_folder(self.split_dir, self._hint())
        self.cameras = self._cameras(cameras, items)
        train, query, gallery = split_identities(
            items, self.num_train_ids, self.seed,
            cameras=None if self.cameras is None else [c - 1 for c in self.cameras])
        super().__init__(_prefixed(train, self.dataset_name), query, gallery, **kwargs)

    def _cameras(self, cameras: Optional[Sequence[int]], items: Sequence[Item]) -> Optional[Tuple[int, ...]]:
        """The kept 1-based cameras: ``cameras``, else DCMIP_MARKET_SPLIT_CAMERAS, else the
        class default (None: all), checked against the folder's cameras."""
        key = "DCMIP_MARKET_SPLIT_CAMERAS"
        if cameras is None and os.environ.get(key):
            try:
                cameras = [int(c) for c in os.environ[key].split(",")]
            except ValueError:
                raise DatasetFormatError(f"Environment variable {key}={os.environ[key]!r} must be "
                                         f"comma-separated 1-based camera numbers, e.g. 5,6.") from None
        cameras = self.default_cameras if cameras is None else tuple(int(c) for c in cameras)
        if cameras is None:
            return None
        present = sorted({cam + 1 for _, _, cam in items})
        if len(set(cameras)) < 2 or not set(cameras) <= set(present):
            raise DatasetFormatError(
                f"{type(self).__name__}: cameras {list(cameras)} (the cameras argument or {key}): give at "
                f"least two distinct 1-based cameras of the folder, which has {present}.")
        return tuple(sorted(set(cameras)))

    @classmethod
    def _hint(cls) -> str:
        return ("Set DCMIP_MARKET_SPLIT_DIR (or pass split_dir) to a folder of labelled "
                "Market-format images, or link Market-1501's training images to "
                "<FASTREID_DATASETS>/market1501-train/bounding_box_train; see datasets/README.md.")

    @classmethod
    def _find_split_dir(cls, root: str, split_dir: Optional[str]) -> str:
        explicit = split_dir or os.environ.get("DCMIP_MARKET_SPLIT_DIR")
        if explicit:
            return explicit  # parse_market_folder reports it if it does not exist
        candidates = [os.path.join(root, "market1501-train", "bounding_box_train"),
                      str(cls._shared_dir)]
        for candidate in candidates:
            if os.path.isdir(candidate):
                return candidate
        raise DatasetNotFoundError(f"MarketSplit: no image folder found; tried "
                                f"{', '.join(candidates)}. {cls._hint()}")


def split_identities(items: Sequence[Item], num_train_ids: int, seed: int,
                     cameras: Optional[Sequence[int]] = None) -> Tuple[List[Item], List[Item], List[Item]]:
    """Split labelled ``items`` into ``(train, query, gallery)`` by identity; see MarketSplit.

    Deterministic given the items (sorted first, so the listing order does not matter),
    ``num_train_ids`` and ``seed``. ``cameras`` (0-based): drop the images of other cameras
    after the identity split, which therefore does not depend on them.
    """
    items = sorted(items, key=lambda item: (item[1], item[2], os.path.basename(item[0])))
    pids = sorted({pid for _, pid, _ in items if pid > 0})
    if not 1 <= num_train_ids < len(pids):
        raise DatasetFormatError(f"num_train_ids={num_train_ids}: the folder has {len(pids)} identities; "
                         f"at least one must be left for testing.")
    rng = np.random.default_rng(seed)
    train_ids = set(rng.permutation(pids)[:num_train_ids].tolist())
    if cameras is not None:
        items = [item for item in items if item[2] in set(cameras)]

    train, test = [], defaultdict(lambda: defaultdict(list))  # test[pid][cam] -> items
    for item in items:
        if item[1] in train_ids:
            train.append(item)
        else:
            test[item[1]][item[2]].append(item)

    query, gallery = [], []
    # A separate stream, so the query choice does not shift the identity split.
    rng = np.random.default_rng([seed, 1])
    for pid, by_cam in sorted(test.items()):
        cams = sorted(by_cam)
        queried = set(cams) if pid > 0 and len(cams) > 1 else set()
        # With one query per camera, a camera keeps gallery images only if it has two or more.
        # If at most one camera does, that camera's query would have no cross-camera match:
        # leave one single-image camera (a seeded choice) wholly in the gallery.
        singles = [cam for cam in cams if len(by_cam[cam]) == 1]
        if queried and len(cams) - len(singles) <= 1:
            queried.discard(singles[int(rng.integers(len(singles)))])
        for cam in cams:
            group = by_cam[cam]
            pick = int(rng.integers(len(group))) if cam in queried else -1
            for i, item in enumerate(group):
                (query if i == pick else gallery).append(item)
    return train, query, gallery


@DATASET_REGISTRY.register()
class MarketSplitTwoCameras(MarketSplit):
    """:class:`MarketSplit` on cameras c5 and c6 only (issue 13's two-camera protocol).

    The pair was chosen from the training identities alone (``tools/camera_shift.py``,
    docs/results/camera-shift.md): of the pairs that share at least 150 of the 500 training
    identities (enough cross-camera identities to learn from), c5-c6 has the largest gap
    between ImageNet MobileNetV2's within-camera and cross-camera similarity of the same person
    (0.108), and the largest distance between the two cameras' mean features of all 15 pairs.
    ``cameras`` / DCMIP_MARKET_SPLIT_CAMERAS replace the pair; every other setting is
    MarketSplit's.
    """
    dataset_name = "marketsplit2cam"
    default_cameras = (5, 6)
