"""The clustering step of every epoch (METHODS §1 steps 2-3, §2 camera-aware proxies).

Standalone (no fastreid needed) and without any dense N×N array:

- :func:`knn`: faiss kNN, the ``initial_rank`` of the Jaccard distance.
- :func:`jaccard_distance`: exact k-reciprocal Jaccard distances as a sparse matrix.
- :func:`dbscan`: DBSCAN on that sparse matrix.
- :func:`cluster_features`: the three above, features in, labels out.
- :func:`camera_aware_proxies`: O2CAP's (cluster, camera) proxies.
- :func:`gather_features` / :func:`broadcast_labels`: cluster once under DDP.
- :func:`pseudo_label_scores`: NMI / ARI of the pseudo labels.

See ``docs/clustering.md``.
"""
from typing import Union

import numpy as np
import torch

from .dbscan import dbscan
from .distributed import broadcast_labels, gather_features
from .jaccard import jaccard_distance
from .knn import KNN_METHODS, knn
from .metrics import pseudo_label_scores
from .proxies import camera_aware_proxies

__all__ = ["knn", "KNN_METHODS", "jaccard_distance", "dbscan", "cluster_features",
           "camera_aware_proxies", "gather_features", "broadcast_labels", "pseudo_label_scores"]


def cluster_features(features: Union[np.ndarray, torch.Tensor], k1: int = 20, k2: int = 6,
                     eps: float = 0.5, min_samples: int = 4, knn: str = "exact") -> np.ndarray:
    """Pseudo labels of METHODS §1 steps 2-3: Jaccard distance, then DBSCAN.

    Args:
        features: (N, d) features (numpy or torch, CPU or CUDA); L2-normalised internally.
        k1, k2: Jaccard neighbourhood and query-expansion sizes (O2CAP 20 / 6, DCMIP 30 / 6).
        eps: DBSCAN radius in (0, 1) (O2CAP 0.5; DCMIP 0.45 Market-1501, 0.7 MSMT17 / Duke).
        min_samples: DBSCAN core-point size (4 in both papers).
        knn: ``"exact"``, ``"ivf"`` or ``"hnsw"`` (see :func:`knn`).

    Returns:
        (N,) int64 labels, clusters 0..C-1 and -1 for outliers; identical to the authors'
        dense pipeline on the same kNN, and deterministic.
    """
    if not 0 < eps < 1:  # checked before the expensive part
        raise ValueError(f"eps = {eps!r} must be in (0, 1): Jaccard distances lie in [0, 1]")
    return dbscan(jaccard_distance(features, k1, k2, knn=knn), eps, min_samples)
