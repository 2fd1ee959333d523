"""Camera-aware proxies (METHODS §2, O2CAP): every cluster split by camera."""
from typing import Union

import numpy as np
import torch

__all__ = ["camera_aware_proxies"]


def camera_aware_proxies(labels: Union[np.ndarray, torch.Tensor],
                         cams: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    """Proxy label of every image: one proxy per (cluster, camera) pair that has images.

    Args:
        labels: (N,) cluster labels from DBSCAN, -1 for outliers.
        cams: (N,) camera ids (any integers).

    Returns:
        (N,) int64 proxy labels in 0..Z-1, numbered in the order of (cluster label, camera
        id), so a cluster's proxies are consecutive and sorted by camera; outliers stay -1.

    Raises:
        ValueError: shapes that differ or are not 1-D, non-integer values, labels below -1.
    """
    labels, cams = _as_int_vector(labels, "labels"), _as_int_vector(cams, "cams")
    if labels.shape != cams.shape:
        raise ValueError(f"labels {labels.shape} and cams {cams.shape} must have the same "
                         "length: one cluster label and one camera per image")
    if labels.size and labels.min() < -1:
        raise ValueError("labels must be cluster ids >= 0 or -1 for outliers")
    proxies = np.full(labels.shape, -1, dtype=np.int64)
    kept = labels >= 0
    if kept.any():
        # One key per (cluster, camera rank); np.unique numbers them in that order.
        _, cam_rank = np.unique(cams[kept], return_inverse=True)
        key = labels[kept] * (int(cam_rank.max()) + 1) + cam_rank
        proxies[kept] = np.unique(key, return_inverse=True)[1]
    return proxies


def _as_int_vector(values: Union[np.ndarray, torch.Tensor], name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array with one entry per image, got shape "
                         f"{values.shape}")
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"{name} must hold integers, got dtype {values.dtype}")
    return values.astype(np.int64, copy=False)
