"""The clustering step of every epoch (METHODS §1 steps 2-3, §2 camera-aware proxies).

Standalone (no fastreid needed) and without any dense N×N array:

- :func:`knn`: faiss kNN, the ``initial_rank`` of the Jaccard distance.
- :func:`jaccard_distance`: exact k-reciprocal Jaccard distances as a sparse matrix.
- :func:`dbscan`: DBSCAN on that sparse matrix.
- :func:`cluster_features`: the three above, features in, labels out;
  :func:`cluster_features_distributed` the same under DDP.
- :func:`camera_aware_proxies`: O2CAP's (cluster, camera) proxies.
- :func:`gather_features` / :func:`broadcast_labels` / :func:`sharded_knn`: cluster once
  under DDP, the kNN search split over the ranks.
- :func:`pseudo_label_scores`: NMI / ARI of the pseudo labels.

See ``docs/clustering.md``.
"""
from typing import Optional, Union

import numpy as np
import torch

from .dbscan import dbscan
from .distributed import broadcast_labels, gather_features, sharded_knn
from .jaccard import jaccard_distance
from .knn import KNN_METHODS, knn
from .metrics import pseudo_label_scores
from .proxies import camera_aware_proxies
from ..timing import timed

__all__ = ["knn", "KNN_METHODS", "jaccard_distance", "dbscan", "cluster_features", "cluster_features_distributed",
           "camera_aware_proxies", "gather_features", "broadcast_labels", "sharded_knn",
           "pseudo_label_scores"]


def cluster_features(features: Union[np.ndarray, torch.Tensor], k1: int = 20, k2: int = 6,
                     eps: float = 0.5, min_samples: int = 4, knn: str = "exact",
                     initial_rank: Optional[np.ndarray] = None, knn_options: Optional[dict] = None) -> np.ndarray:
    """Pseudo labels of METHODS §1 steps 2-3: Jaccard distance, then DBSCAN.

    Args:
        features: (N, d) features (numpy or torch, CPU or CUDA); L2-normalised internally.
        k1, k2: Jaccard neighbourhood and query-expansion sizes (O2CAP 20 / 6, DCMIP 30 / 6).
        eps: DBSCAN radius in (0, 1) (O2CAP 0.5; DCMIP 0.45 Market-1501, 0.7 MSMT17 / Duke).
        min_samples: DBSCAN core-point size (4 in both papers).
        knn: ``"exact"``, ``"ivf"`` or ``"hnsw"`` (see :func:`knn`).
        initial_rank: precomputed kNN of the L2-normalised features (see
            :func:`jaccard_distance`); ``knn`` is then ignored.
        knn_options: keyword arguments of the kNN search (:func:`knn`: ``nprobe``, ``ef_search``).

    Returns:
        (N,) int64 labels, clusters 0..C-1 and -1 for outliers; identical to the authors'
        dense pipeline on the same kNN, and deterministic.
    """
    if not 0 < eps < 1:  # checked before the expensive part
        raise ValueError(f"eps = {eps!r} must be in (0, 1): Jaccard distances lie in [0, 1]")
    with timed("jaccard"):  # the kNN inside it is billed to "knn" (dcmip.timing)
        distance = jaccard_distance(features, k1, k2, knn=knn, knn_options=knn_options, initial_rank=initial_rank,
                                    max_distance=eps)  # DBSCAN reads only J <= eps
    with timed("dbscan"):
        return dbscan(distance, eps, min_samples)


def cluster_features_distributed(features: torch.Tensor, k1: int = 20, k2: int = 6, eps: float = 0.5,
                                 min_samples: int = 4, knn: str = "exact",
                                 knn_options: Optional[dict] = None) -> np.ndarray:
    """:func:`cluster_features` called by every rank with the same full (N, d) features: the
    kNN search is split over the ranks (:func:`sharded_knn`), rank 0 computes the Jaccard
    distance and DBSCAN from the gathered neighbour lists, and its labels are broadcast. The
    labels equal the single-process ones; in a single process this is :func:`cluster_features`.
    """
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return cluster_features(features, k1, k2, eps, min_samples, knn, knn_options=knn_options)
    if not 0 < eps < 1:  # checked on every rank, before the collective search
        raise ValueError(f"eps = {eps!r} must be in (0, 1): Jaccard distances lie in [0, 1]")
    # jaccard_distance searches the L2-normalised features; the shards must search the same.
    normalized = torch.nn.functional.normalize(torch.as_tensor(features).detach().float(), dim=1)
    with timed("knn"):
        initial_rank = sharded_knn(normalized, k1, knn, **(knn_options or {}))
    labels = (cluster_features(features, k1, k2, eps, min_samples, initial_rank=initial_rank)
              if torch.distributed.get_rank() == 0 else None)
    return broadcast_labels(labels, src=0)
