"""Ranked lists for people to look at: each query's top-k gallery images, drawn with PIL
(behind ``tools/visualize_ranks.py``, after fastreid's ``demo/visualize_result.py``).

Distances are cosine distances ``1 - q.g`` of L2-normalised features. Gallery images left out
of a query's list: the query image itself (same path); with identities, the gallery images of
the query's identity in the query's camera (the Market-1501 protocol, as in evaluation); with
``cross_camera``, every image of the query's camera (cameras must be known).
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .registry import UserInputError

__all__ = ["RankLists", "rank_lists", "select_queries", "draw_rank_page", "page_size", "ORDERS",
           "THUMB", "FRAME", "GAP", "QUERY_GAP", "MARGIN", "TITLE_H", "TEXT_H"]

ORDERS = ("worst", "best", "random")
# Page layout, in pixels: a title line, then one row per query: the query, a wider gap, its
# top-k. Each image is a THUMB (width, height) thumbnail inside a FRAME-wide border, with two
# lines of text (TEXT_H) below.
THUMB = (64, 128)
FRAME = 3
GAP = 4
QUERY_GAP = 16
MARGIN = 8
TITLE_H = 22
TEXT_H = 28
MATCH, MISMATCH, QUERY = (0, 160, 60), (220, 30, 30), (40, 90, 200)
BACKGROUND = (255, 255, 255)


@dataclass
class RankLists:
    """Top-k of each query: ``index`` (Q, k) gallery rows (-1 past the end of a short list),
    ``distance`` (Q, k) (inf there), ``match`` (Q, k) bool where identities are known, else
    None."""
    index: np.ndarray
    distance: np.ndarray
    match: Optional[np.ndarray]


def rank_lists(query_feats: np.ndarray, gallery_feats: np.ndarray, topk: int,
               query_paths: Sequence[str], gallery_paths: Sequence[str],
               query_cams: Optional[np.ndarray] = None, gallery_cams: Optional[np.ndarray] = None,
               query_pids: Optional[np.ndarray] = None, gallery_pids: Optional[np.ndarray] = None,
               cross_camera: bool = False) -> RankLists:
    """The top-``topk`` gallery images of every query (see the module docstring for which
    images are left out). Ties keep gallery order."""
    dist = 1.0 - np.asarray(query_feats, np.float64) @ np.asarray(gallery_feats, np.float64).T
    excluded = np.asarray(query_paths)[:, None] == np.asarray(gallery_paths)[None, :]
    same_cam = None
    if query_cams is not None and gallery_cams is not None:
        same_cam = np.asarray(query_cams)[:, None] == np.asarray(gallery_cams)[None, :]
    if query_pids is not None and gallery_pids is not None and same_cam is not None:
        excluded |= same_cam & (np.asarray(query_pids)[:, None] == np.asarray(gallery_pids)[None, :])
    if cross_camera:
        if same_cam is None or (np.asarray(query_cams) < 0).any() or (np.asarray(gallery_cams) < 0).any():
            raise UserInputError("--cross-camera needs the camera of every image: give camera folders "
                                 "(<root>/<camera>/...) or a CSV with a camera column.")
        excluded |= same_cam
    dist[excluded] = np.inf
    k = min(topk, dist.shape[1])
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    distance = np.take_along_axis(dist, order, axis=1)
    index = np.where(np.isfinite(distance), order, -1)
    match = None
    if query_pids is not None and gallery_pids is not None:
        match = (np.asarray(query_pids)[:, None] == np.asarray(gallery_pids)[order]) & (index >= 0)
    return RankLists(index, distance, match)


def select_queries(order: str, num: int, num_queries: int, ap: Optional[np.ndarray] = None,
                   seed: int = 0) -> np.ndarray:
    """Which queries to draw, in drawing order: ``worst`` (lowest AP first) or ``best`` (highest
    first) need ``ap`` (queries with NaN AP, no valid match, are left out; ties by query
    order); ``random`` is a seeded sample."""
    if order not in ORDERS:
        raise UserInputError(f"--order {order!r}: choose one of {', '.join(ORDERS)}")
    if order == "random":
        return np.random.default_rng(seed).permutation(num_queries)[:num]
    if ap is None:
        raise UserInputError(f"--order {order} ranks queries by their AP, which needs identities: use "
                             f"--order random for unlabelled images, or --dataset for a labelled test set.")
    valid = np.flatnonzero(~np.isnan(ap))
    key = ap[valid] if order == "worst" else -ap[valid]
    return valid[np.argsort(key, kind="stable")][:num]


def page_size(rows: int, topk: int):
    """(width, height) of a page of ``rows`` queries with ``topk`` gallery images each."""
    cell_w, cell_h = THUMB[0] + 2 * FRAME, THUMB[1] + 2 * FRAME + TEXT_H
    return (2 * MARGIN + (topk + 1) * cell_w + QUERY_GAP + (topk - 1) * GAP,
            2 * MARGIN + TITLE_H + rows * cell_h + (rows - 1) * GAP)


def _font(size: int = 11):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the bitmap font, one size
        return ImageFont.load_default()


def _cell(draw: ImageDraw.ImageDraw, page: Image.Image, x: int, y: int, path: Optional[str],
          frame: Optional[tuple], lines: Sequence[str], font) -> None:
    if frame is not None:
        draw.rectangle([x, y, x + THUMB[0] + 2 * FRAME - 1, y + THUMB[1] + 2 * FRAME - 1], fill=frame)
    if path is not None:
        with Image.open(path) as img:
            page.paste(img.convert("RGB").resize(THUMB, Image.BICUBIC), (x + FRAME, y + FRAME))
    for i, line in enumerate(lines):
        draw.text((x + 1, y + THUMB[1] + 2 * FRAME + 1 + 13 * i), line, fill=(0, 0, 0), font=font)


def draw_rank_page(queries: Sequence[int], ranks: RankLists, query_paths: Sequence[str],
                   gallery_paths: Sequence[str], query_cams: Optional[np.ndarray] = None,
                   gallery_cams: Optional[np.ndarray] = None, ap: Optional[np.ndarray] = None,
                   title: str = "") -> Image.Image:
    """One page: a row per query, ``queries[i]`` (an index into the query arrays) having its
    top-k in row i of ``ranks``: the query (blue frame; its AP when known) and its top-k with
    rank and distance; green / red frames for the same / another identity where identities
    are known, none otherwise. ``query_cams`` / ``gallery_cams`` label the images: camera ids
    (-1 unknown) or names."""
    topk = ranks.index.shape[1]
    page = Image.new("RGB", page_size(len(queries), topk), BACKGROUND)
    draw, font = ImageDraw.Draw(page), _font()
    draw.text((MARGIN, MARGIN), title, fill=(0, 0, 0), font=_font(13))
    cell_w, cell_h = THUMB[0] + 2 * FRAME, THUMB[1] + 2 * FRAME + TEXT_H

    def cam(cams, i):
        if cams is None:
            return ""
        if isinstance(cams[i], str):
            return cams[i][:12]  # a camera name, as wide as a cell
        return f"cam {int(cams[i])}" if cams[i] >= 0 else ""

    for row, q in enumerate(queries):
        y = MARGIN + TITLE_H + row * (cell_h + GAP)
        info = [f"query {q}", " ".join(part for part in (cam(query_cams, q), f"AP {ap[q]:.2f}"
                                                         if ap is not None and not np.isnan(ap[q]) else "") if part)]
        _cell(draw, page, MARGIN, y, query_paths[q], QUERY, info, font)
        for r in range(topk):
            x = MARGIN + cell_w + QUERY_GAP + r * (cell_w + GAP)
            g = int(ranks.index[row, r])
            if g < 0:
                continue
            frame = None if ranks.match is None else (MATCH if ranks.match[row, r] else MISMATCH)
            _cell(draw, page, x, y, gallery_paths[g], frame,
                  [f"{r + 1}. d {ranks.distance[row, r]:.3f}", cam(gallery_cams, g)], font)
    return page
