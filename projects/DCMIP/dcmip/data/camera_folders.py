"""Unlabelled images from your own cameras: one sub-folder per camera, or a CSV of path,camera.

* :func:`list_images` reads a folder, a glob or a CSV into ``(path, camera name or None)``
  pairs; the tools (``extract_features.py``, ``visualize_ranks.py``) take any of them.
* :class:`CameraFolders` is the training dataset (``DATASETS.NAMES ("CameraFolders",)``): a
  root whose first-level sub-folders are the cameras (``<root>/<camera>/**/*.jpg``, any file
  names, any depth below), or a CSV with a ``path,camera`` header. Its source is
  ``UNSUP.DATA.CAMERA_FOLDERS``, by default ``$FASTREID_DATASETS/camera_folders``.

There are no identities: every image gets its own pid (fastreid's item contract needs one),
and ``has_identities = False`` tells the trainer not to score pseudo labels against them.

Decisions on bad input (docs/datasets.md): files that are not images are skipped with one
warning naming them (OS clutter such as ``Thumbs.db``, ``desktop.ini`` and hidden files is
skipped silently), since a camera export often holds notes or videos beside the crops; in a
CSV, every row must name an existing image, because the user listed it. Everything else
(missing or empty root, images directly in the root, a malformed CSV) stops with one line
naming the problem and the fix. A single camera trains, with one warning: the camera-aware
parts of O2CAP and DCMIP then have nothing to work with.
"""
import csv
import glob
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset
from tabulate import tabulate

from ..registry import DatasetFormatError, DatasetNotFoundError

__all__ = ["CameraFolders", "IMAGE_SUFFIXES", "list_images", "list_camera_folders", "read_camera_csv",
           "camera_index"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
# Files operating systems and photo tools leave in folders; skipped without a word.
_CLUTTER = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
_LAYOUT = ("<root>/<camera>/**/<image>.jpg|jpeg|png|bmp, or a CSV file with a path,camera header")

Entry = Tuple[str, Optional[str]]  # (image path, camera name or None where unknown)


def _first(items: Sequence[str], n: int = 5) -> str:
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")


def _is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _is_clutter(name: str) -> bool:
    return name.startswith(".") or name.lower() in _CLUTTER


def _walk_images(folder: str) -> Tuple[List[str], List[str]]:
    """(images, other files) below ``folder``, recursively, sorted; clutter left out."""
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if _is_clutter(name):
                continue
            (images if _is_image(name) else others).append(os.path.join(dirpath, name))
    return sorted(images), sorted(others)


def _warn_skipped(others: List[str], where: str) -> None:
    if others:
        logger.warning(f"skipped {len(others)} file(s) in {where} that are not images "
                       f"({', '.join(IMAGE_SUFFIXES)}): {_first(others)}")


def list_camera_folders(root: str, require_cameras: bool = True) -> List[Entry]:
    """``(path, camera)`` of every image below ``root``, the camera being the first-level
    sub-folder the image is in. Images directly in ``root`` have no camera: an error when
    ``require_cameras``, camera ``None`` otherwise. Sorted by camera, then path."""
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"camera folders: {root} is not a folder. Expected {_LAYOUT}.")
    entries, loose, others = [], [], []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if _is_clutter(name):
            continue
        if os.path.isdir(path):
            images, skipped = _walk_images(path)
            others += skipped
            if not images:
                logger.warning(f"camera folder {path} holds no images; ignored")
            entries += [(p, name) for p in images]
        elif _is_image(name):
            loose.append(path)
        else:
            others.append(path)
    _warn_skipped(others, root)
    if loose and require_cameras:
        raise DatasetFormatError(
            f"camera folders: {len(loose)} image(s) directly in {root} ({_first(loose)}), where each "
            f"camera needs its own sub-folder. Move them into <root>/<camera>/, or list them in a CSV "
            f"file with a path,camera header.")
    entries = [(p, None) for p in loose] + entries
    if not entries:
        raise DatasetFormatError(f"camera folders: no images in {root}. Expected {_LAYOUT}.")
    return entries


def read_camera_csv(csv_path: str, require_cameras: bool = True) -> List[Entry]:
    """``(path, camera)`` rows of a CSV file with a ``path`` column and, unless not
    ``require_cameras``, a ``camera`` column. Relative paths are resolved against the CSV's
    folder. Every row must name an existing image file; all bad rows are reported at once."""
    if not os.path.isfile(csv_path):
        raise DatasetNotFoundError(f"camera CSV {csv_path}: no such file.")
    base = os.path.dirname(os.path.abspath(csv_path))
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ("path", "camera") if c not in header and (c == "path" or require_cameras)]
        if missing:
            raise DatasetFormatError(
                f"camera CSV {csv_path}: no {' and no '.join(missing)} column (header: "
                f"{','.join(header) or 'empty'}). The first line must be the header path,camera.")
        col = {name: header.index(name) for name in ("path", "camera") if name in header}
        entries, bad, absent = [], [], []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue  # blank line
            cells = [cell.strip() for cell in row]
            if len(cells) != len(header) or any(not cells[i] for i in col.values()):
                bad.append(f"line {line}")
                continue
            path = cells[col["path"]]
            path = path if os.path.isabs(path) else os.path.join(base, path)
            if not _is_image(path):
                bad.append(f"line {line} (not an image: {os.path.basename(path)})")
            elif not os.path.isfile(path):
                absent.append(path)
            else:
                entries.append((path, cells[col["camera"]] if "camera" in col else None))
    if bad:
        raise DatasetFormatError(
            f"camera CSV {csv_path}: {len(bad)} bad row(s): {_first(bad)}. Each row needs "
            f"{len(header)} fields, a non-empty path{' and camera' if 'camera' in col else ''}, and "
            f"an image path ({', '.join(IMAGE_SUFFIXES)}).")
    if absent:
        raise DatasetNotFoundError(
            f"camera CSV {csv_path}: {len(absent)} listed file(s) do not exist: {_first(absent)}. "
            f"Relative paths are read from the CSV's folder ({base}); fix or remove those rows.")
    if not entries:
        raise DatasetFormatError(f"camera CSV {csv_path}: no rows below the header.")
    return sorted(entries, key=lambda e: (e[1] or "", e[0]))


def list_images(source: str, require_cameras: bool = False) -> List[Entry]:
    """``(path, camera or None)`` of the images of ``source``: a CSV file (``.csv``), a folder
    (first-level sub-folders are cameras, images directly in it have none) or a glob pattern
    (``**`` recurses; no cameras)."""
    if source.lower().endswith(".csv"):
        return read_camera_csv(source, require_cameras)
    if glob.has_magic(source):
        if require_cameras:
            raise DatasetFormatError(f"{source}: a glob carries no cameras; give a folder with one "
                                     f"sub-folder per camera, or a CSV file with a path,camera header.")
        matches = sorted(p for p in glob.glob(source, recursive=True) if os.path.isfile(p))
        images = [p for p in matches if _is_image(p)]
        _warn_skipped([p for p in matches if not _is_image(p) and not _is_clutter(os.path.basename(p))],
                      source)
        if not images:
            raise DatasetNotFoundError(f"{source}: the pattern matches no images ({', '.join(IMAGE_SUFFIXES)}).")
        return [(p, None) for p in images]
    if not os.path.exists(source):
        raise DatasetNotFoundError(f"{source}: no such folder or file. Give a folder of images, a glob "
                                   f"pattern or a CSV file with a path,camera header.")
    if os.path.isfile(source):
        raise DatasetFormatError(f"{source}: not a folder, a glob or a .csv file.")
    return list_camera_folders(source, require_cameras)


def camera_index(entries: Sequence[Entry]) -> Dict[str, int]:
    """Camera name -> 0-based id, by sorted name (so the same folders give the same ids)."""
    return {name: i for i, name in enumerate(sorted({cam for _, cam in entries if cam is not None}))}


@DATASET_REGISTRY.register()
class CameraFolders(ImageDataset):
    """Unlabelled training images from your own cameras (see the module docstring).

    ``source`` is a folder or a CSV file; empty means ``<root>/camera_folders``. The train
    items are ``(path, "camerafolders_image<i>", "camerafolders_<camera id>")``: a unique pid
    per image, so nothing can mistake it for an identity, and camera ids by sorted camera
    name (the mapping is logged). There is no query or gallery: evaluate on a labelled test
    set (``DATASETS.TESTS``) if you have one.
    """
    dataset_dir = "camera_folders"
    dataset_name = "camerafolders"
    # Read by the trainer: no NMI / ARI of pseudo labels against these pids.
    has_identities = False

    def __init__(self, root: str = "datasets", source: str = "", **kwargs):
        self.root = root
        self.source = source or os.path.join(root, self.dataset_dir)
        if not os.path.exists(self.source) and not glob.has_magic(self.source):
            raise DatasetNotFoundError(
                f"CameraFolders: {self.source} not found. Set UNSUP.DATA.CAMERA_FOLDERS to your folder "
                f"({_LAYOUT}), or put it at $FASTREID_DATASETS/{self.dataset_dir}.")
        entries = list_images(self.source, require_cameras=True)
        self.cameras = camera_index(entries)
        logger.info(f"CameraFolders {self.source}: {len(entries)} images, {len(self.cameras)} camera(s): "
                    + ", ".join(f"{name} -> {i}" for name, i in self.cameras.items()))
        if len(self.cameras) == 1:
            logger.warning(
                f"CameraFolders {self.source}: one camera only. Training goes on, but the camera-aware "
                f"parts have nothing to work with: O2CAP's camera proxies equal its clusters (plain "
                f"cluster contrast) and DCMIP's camera-diverse sampler draws same-camera images. Add "
                f"the other cameras' folders if you have them.")
        train = [(path, f"{self.dataset_name}_image{i}", f"{self.dataset_name}_{self.cameras[cam]}")
                 for i, (path, cam) in enumerate(entries)]
        super().__init__(train, [], [], **kwargs)

    @classmethod
    def config_kwargs(cls, cfg) -> Dict[str, str]:
        """Constructor arguments from the config (fastreid passes only ``root``)."""
        return {"source": cfg.UNSUP.DATA.CAMERA_FOLDERS}

    def show_train(self):
        table = tabulate([["train", "unlabelled", len(self.train), len(self.cameras)]],
                         headers=["subset", "# ids", "# images", "# cameras"], tablefmt="pipe")
        logger.info(f"=> Loaded {type(self).__name__}:\n{table}")
