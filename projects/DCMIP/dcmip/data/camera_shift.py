"""How far apart two cameras look, from labelled training images only (issue 13's two-camera
protocol picks its pair with this; ``tools/camera_shift.py`` is the command line).

For every camera pair (a, b), over the training identities seen by both:

- ``gap``: identity similarity gap of a feature extractor (e.g. ImageNet MobileNetV2, the
  zero-shot start of every method): the mean cosine similarity of an identity's image pairs
  within a camera minus across the two cameras, averaged over identities. The larger it is,
  the more a camera-agnostic clustering of those features groups by camera instead of person.
- ``cross_map``: zero-shot cross-camera retrieval mAP, each image of a shared identity in one
  camera querying all images of the other camera (both directions, averaged).
- ``domain``: 1 - cosine between the two cameras' mean features (all their images).
- ``colour``: total-variation distance between the cameras' mean RGB histograms (0..1).

Pure numpy, so it is checked on small cases against a loop-by-loop transcription.
"""
from typing import Dict, List

import numpy as np

STATISTICS = ("shared_ids", "gap", "cross_map", "domain", "colour")


def colour_histogram(image: np.ndarray, bins: int = 8) -> np.ndarray:
    """(bins**3,) normalised joint RGB histogram of an (H, W, 3) uint8 image."""
    q = (image.reshape(-1, 3).astype(np.int64) * bins) // 256
    return np.bincount((q[:, 0] * bins + q[:, 1]) * bins + q[:, 2], minlength=bins ** 3) / len(q)


def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """AP of one query: ``scores`` over the gallery, ``relevant`` the boolean matches (>= 1)."""
    hits = relevant[np.argsort(-scores, kind="stable")]
    ranks = np.flatnonzero(hits) + 1
    return float(np.mean(np.arange(1, len(ranks) + 1) / ranks))


def pair_statistics(features: np.ndarray, histograms: np.ndarray, pids: np.ndarray,
                    cams: np.ndarray) -> List[Dict[str, float]]:
    """One row per camera pair a < b: ``{"cameras": (a, b), **STATISTICS}``.

    Args:
        features: (N, d) L2-normalised features.
        histograms: (N, h) colour histograms.
        pids, cams: (N,) identity and camera of each image.
    """
    rows = []
    sims = features @ features.T
    for a in np.unique(cams):
        for b in np.unique(cams):
            if a >= b:
                continue
            in_a, in_b = cams == a, cams == b
            shared = np.intersect1d(pids[in_a], pids[in_b])
            gaps = []
            for pid in shared:
                ia, ib = np.flatnonzero(in_a & (pids == pid)), np.flatnonzero(in_b & (pids == pid))
                within = [sims[np.ix_(i, i)][np.triu_indices(len(i), 1)] for i in (ia, ib) if len(i) > 1]
                if within:
                    gaps.append(np.concatenate(within).mean() - sims[np.ix_(ia, ib)].mean())
            aps = []
            for q_cam, g_cam in ((in_a, in_b), (in_b, in_a)):
                gallery = np.flatnonzero(g_cam)
                for q in np.flatnonzero(q_cam & np.isin(pids, shared)):
                    aps.append(average_precision(sims[q, gallery], pids[gallery] == pids[q]))
            mean_a, mean_b = features[in_a].mean(0), features[in_b].mean(0)
            rows.append({
                "cameras": (int(a), int(b)),
                "shared_ids": len(shared),
                "gap": float(np.mean(gaps)) if gaps else float("nan"),
                "cross_map": float(np.mean(aps)) if aps else float("nan"),
                "domain": float(1 - mean_a @ mean_b / np.linalg.norm(mean_a) / np.linalg.norm(mean_b)),
                "colour": float(0.5 * np.abs(histograms[in_a].mean(0) - histograms[in_b].mean(0)).sum()),
            })
    return rows
