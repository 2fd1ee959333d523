"""A montage of one epoch's pseudo identities, for a person to judge the clustering by eye.

One row per cluster of a seeded sample (largest first), then one row of DBSCAN outliers
(the images not trained on this epoch). Each row starts with the cluster id, its size and
how many cameras it spans; its images follow grouped by camera, each group on its own
background band under a label ``cam <name> (<images of the cluster in that camera>)``. A
good cluster shows one person across several cameras; a bad one mixes people, or holds one
camera's images of a scene only.
"""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

OUTLIERS = -1

# Geometry in pixels: thumbnails of re-ID crops (about 1:2), ~40 per row at the default width.
THUMB_W, THUMB_H, GAP = 32, 64, 2
HEADER_W, MARGIN, LABEL_H, ROW_PAD, FONT_SIZE = 118, 8, 15, 8, 12
ROW_H = LABEL_H + THUMB_H + ROW_PAD
BANDS = ((228, 233, 242), (247, 247, 247))
TEXT, OUTLIER_TEXT, BACKGROUND = (20, 20, 20), (170, 30, 30), (255, 255, 255)


@dataclass
class CameraGroup:
    cam: int
    total: int  # images of the row in this camera
    shown: List[int] = field(default_factory=list)  # their indices (into ``paths``) drawn


@dataclass
class MontageRow:
    cluster: int  # OUTLIERS for the outlier row
    size: int
    groups: List[CameraGroup]

    @property
    def num_cameras(self) -> int:
        return len(self.groups)


def row_capacity(width: int) -> int:
    """Thumbnails that fit in one row of a montage ``width`` pixels wide."""
    return max(1, (width - HEADER_W - 2 * MARGIN + GAP) // (THUMB_W + GAP))


def allocate(counts: np.ndarray, capacity: int) -> np.ndarray:
    """Images to show per camera when a row holds ``capacity``: all of them when they fit;
    otherwise one per camera (the largest cameras first when even that does not fit), and
    the rest of the row shared in proportion to each camera's remaining images (largest
    remainder)."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.sum() <= capacity:
        return counts.copy()
    shown = np.zeros_like(counts)
    by_size = np.argsort(-counts, kind="stable")
    shown[by_size[:capacity]] = 1
    left = capacity - int(shown.sum())
    extra = counts - shown
    if left > 0 and extra.sum() > 0:
        quota = extra * left / extra.sum()
        shown += np.floor(quota).astype(np.int64)
        remainder = left - int(np.floor(quota).sum())
        shown[np.argsort(-(quota - np.floor(quota)), kind="stable")[:remainder]] += 1
    return shown


def montage_rows(labels: Sequence[int], cams: Sequence[int], num_clusters: int, capacity: int,
                 seed: int = 0) -> List[MontageRow]:
    """The rows of :func:`cluster_montage`: ``num_clusters`` clusters drawn with ``seed``
    (all when there are fewer), largest first, then the outliers (label < 0) when there are
    any. Each row shows at most ``capacity`` images (:func:`allocate`), grouped by camera in
    ascending id; which images of a camera are shown is drawn with the same seed."""
    labels, cams = np.asarray(labels), np.asarray(cams)
    rng = np.random.default_rng(seed)
    ids, sizes = np.unique(labels[labels >= 0], return_counts=True)
    picked = rng.choice(len(ids), size=min(num_clusters, len(ids)), replace=False)
    picked = sorted(picked, key=lambda i: (-sizes[i], ids[i]))
    members = [(int(ids[i]), np.flatnonzero(labels == ids[i])) for i in picked]
    outliers = np.flatnonzero(labels < 0)
    if len(outliers):
        members.append((OUTLIERS, outliers))
    rows = []
    for cluster, index in members:
        cam_values, counts = np.unique(cams[index], return_counts=True)
        groups = []
        for cam, total, n in zip(cam_values, counts, allocate(counts, capacity)):
            in_cam = index[cams[index] == cam]
            groups.append(CameraGroup(int(cam), int(total), sorted(rng.choice(in_cam, n, replace=False).tolist())))
        rows.append(MontageRow(cluster, len(index), [g for g in groups if g.shown]))
    return rows


def cluster_montage(paths: Sequence[str], labels: Sequence[int], cams: Sequence[int], *,
                    num_clusters: int = 8, seed: int = 0, camera_names: Optional[Sequence[str]] = None,
                    title: str = "", width: int = 1500) -> Image.Image:
    """An RGB montage ``width`` pixels wide of the pseudo labels ``labels`` (one per image of
    ``paths``, -1 for an outlier) with camera ids ``cams``; cameras are labelled
    ``camera_names[cam]`` (default: the id). ``title`` goes above the rows, followed by a
    line saying how to read the picture."""
    rows = montage_rows(labels, cams, num_clusters, row_capacity(width), seed)
    font = ImageFont.load_default(size=FONT_SIZE)
    num_total = len(np.unique(np.asarray(labels)[np.asarray(labels) >= 0]))
    lines = [title] if title else []
    lines.append(f"{sum(r.cluster != OUTLIERS for r in rows)} of {num_total} clusters drawn at random "
                 f"(seed {seed}), largest first, then the outliers; each row's images grouped by camera, "
                 f"'cam C (n)': n images of the row in camera C")
    top = MARGIN + len(lines) * (FONT_SIZE + 4) + 4
    image = Image.new("RGB", (width, top + len(rows) * ROW_H + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw.text((MARGIN, MARGIN + i * (FONT_SIZE + 4)), line, fill=TEXT, font=font)
    for r, row in enumerate(rows):
        y = top + r * ROW_H
        _draw_header(draw, row, MARGIN, y, font)
        x = MARGIN + HEADER_W
        for g, group in enumerate(row.groups):
            group_w = len(group.shown) * (THUMB_W + GAP) - GAP
            draw.rectangle((x - 1, y, x + group_w, y + LABEL_H + THUMB_H + 1), fill=BANDS[g % 2])
            name = camera_names[group.cam] if camera_names is not None else str(group.cam)
            label = fit_text(draw, font, group_w + 2,
                             (f"cam {name} ({group.total})", f"{name} ({group.total})", name))
            draw.text((x + 1, y + 1), label, fill=TEXT, font=font)
            for k, index in enumerate(group.shown):
                image.paste(thumbnail(paths[index]), (x + k * (THUMB_W + GAP), y + LABEL_H))
            x += group_w + GAP
    return image


def _draw_header(draw, row: MontageRow, x: int, y: int, font) -> None:
    if row.cluster == OUTLIERS:
        lines, colour = ["outliers", f"{row.size} images", "not trained on"], OUTLIER_TEXT
    else:
        lines, colour = [f"cluster {row.cluster}", f"{row.size} images",
                         f"{row.num_cameras} camera{'s' if row.num_cameras > 1 else ''}"], TEXT
    for i, line in enumerate(lines):
        draw.text((x, y + LABEL_H + i * (FONT_SIZE + 4)), line, fill=colour, font=font)


def fit_text(draw, font, max_width: int, options: Sequence[str]) -> str:
    """The first of ``options`` narrower than ``max_width``, else the last one cut to fit."""
    for text in options:
        if draw.textlength(text, font=font) <= max_width:
            return text
    text = options[-1]
    while text and draw.textlength(text + "..", font=font) > max_width:
        text = text[:-1]
    return text + ".." if text else ""


def thumbnail(path: str) -> Image.Image:
    """The image at ``path`` scaled into a THUMB_W x THUMB_H box, aspect kept, on white."""
    with Image.open(path) as im:
        return ImageOps.pad(im.convert("RGB"), (THUMB_W, THUMB_H), color=BACKGROUND)
