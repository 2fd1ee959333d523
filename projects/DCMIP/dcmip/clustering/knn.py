"""k-nearest-neighbour search: the ``initial_rank`` of the k-reciprocal Jaccard distance.

METHODS §1 step 2 starts from every point's ``k1`` nearest neighbours by Euclidean distance,
the point itself included as its own first neighbour. This module computes that list with
faiss, the library the authors use:

- ``"exact"``: a flat L2 index, on the GPU when the features are a CUDA tensor and faiss was
  built with GPU support (``faiss-gpu``); with a CPU-only faiss, CUDA features are searched
  exactly with blocked torch matrix products on their own device instead.
- ``"ivf"`` (inverted lists over a k-means coarse quantizer) and ``"hnsw"`` (a navigable
  small-world graph): approximate indexes for very large N, on the CPU (IVF moves to the GPU
  with ``faiss-gpu``). Both are built deterministically: same features, same neighbours.
"""
from typing import Optional, Union

import faiss
import numpy as np
import torch

__all__ = ["knn", "KNN_METHODS"]

KNN_METHODS = ("exact", "ivf", "hnsw")

ArrayLike = Union[np.ndarray, torch.Tensor]


def knn(features: ArrayLike, k: int, method: str = "exact", *, nlist: Optional[int] = None,
        nprobe: int = 16, hnsw_m: int = 32, ef_search: Optional[int] = None,
        rows: Optional[slice] = None) -> np.ndarray:
    """Indices of every point's ``k`` nearest neighbours by Euclidean distance, itself first.

    Args:
        features: (N, d) float features, a numpy array or a torch tensor (CPU or CUDA). The
            search uses them as given; the Jaccard distance passes L2-normalised features, for
            which the Euclidean order is the inner-product order.
        k: neighbours per point, the point itself included (the authors' ``k1``); ``k < N``.
        method: ``"exact"``, ``"ivf"`` or ``"hnsw"`` (see the module docstring).
        nlist: IVF inverted lists; default ``round(sqrt(N))``, at most ``N // 39`` so that
            k-means gets the 39 training points per centroid faiss asks for.
        nprobe: IVF lists visited per query (``UNSUP.CLUSTER.IVF_NPROBE``). At a fixed nprobe
            the share of lists visited falls as N grows, and so does the recall: see
            docs/benchmarks/clustering.md, "IVF: recall against nprobe".
        hnsw_m: HNSW graph degree.
        ef_search: HNSW search beam; default ``max(2k, 64)``.
        rows: search only the queries ``features[rows]`` (a slice with step 1) against all
            points; the result's row ``r`` is then point ``rows.start + r``. The index is the
            same whatever the slice, so shards of the rows put together equal the full
            result (:func:`dcmip.clustering.distributed.sharded_knn`).

    Returns:
        (N, k) int64 (or one row per point of ``rows``), row ``i`` sorted by increasing distance with ``i`` itself in column 0.
        Should an index rank another point first (an exact duplicate of ``i``) or miss ``i``
        (approximate search), ``i`` is moved or inserted there: every later step relies on
        each point being its own first neighbour.

    Raises:
        ValueError: bad shapes, non-finite values, ``k`` out of ``[1, N)``, an unknown
            method, or an approximate search that found fewer than ``k`` neighbours.
    """
    n = _check_features(features)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k < n:
        raise ValueError(f"k = {k!r} must be an integer in [1, N) = [1, {n}); use fewer "
                         "neighbours (k1) or more points")
    if method not in KNN_METHODS:
        raise ValueError(f"unknown kNN method {method!r}; choose one of {KNN_METHODS}")
    for name, value, key in (("nprobe", nprobe, "IVF_NPROBE"), ("ef_search", ef_search, "HNSW_EF_SEARCH")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
            raise ValueError(f"{name} = {value!r} must be a positive integer (UNSUP.CLUSTER.{key})")
    k = int(k)
    start, stop, step = (rows or slice(None)).indices(n)
    if step != 1:
        raise ValueError(f"rows = {rows!r} must be a contiguous slice (step 1)")
    on_gpu = isinstance(features, torch.Tensor) and features.is_cuda
    faiss_gpu = on_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if on_gpu and method == "exact" and not faiss_gpu:
        return _self_first(_knn_torch(features.float(), k, start, stop), start)
    x = _as_float32_numpy(features)
    index = _build_index(x, method, nlist, nprobe, hnsw_m,
                         ef_search if ef_search is not None else max(2 * k, 64))
    if faiss_gpu and method != "hnsw":  # faiss has no GPU HNSW
        gpu_resources = faiss.StandardGpuResources()  # must outlive the search below
        index = faiss.index_cpu_to_gpu(gpu_resources, features.device.index or 0, index)
    _, rank = index.search(x[start:stop], k)
    if (rank < 0).any():
        raise ValueError(f"the {method!r} index returned fewer than k = {k} neighbours for some "
                         "points; raise nprobe (IVF) or ef_search (HNSW), or use method='exact'")
    return _self_first(rank.astype(np.int64, copy=False), start)


def _check_features(features: ArrayLike) -> int:
    if not isinstance(features, (np.ndarray, torch.Tensor)):
        raise ValueError(f"features must be a numpy array or a torch tensor, got "
                         f"{type(features).__name__}")
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(f"features must have shape (N, d) with N >= 2 and d >= 1, got "
                         f"{tuple(features.shape)}; stack one feature vector per row")
    finite = (torch.isfinite(features).all().item() if isinstance(features, torch.Tensor)
              else np.isfinite(features).all())
    if not finite:
        raise ValueError("features contain NaN or inf; check the model's output (e.g. a "
                         "diverged training step) before clustering")
    return int(features.shape[0])


def _as_float32_numpy(features: ArrayLike) -> np.ndarray:
    if isinstance(features, torch.Tensor):
        features = features.detach().to("cpu", torch.float32).numpy()
    return np.ascontiguousarray(features, dtype=np.float32)


def _build_index(x: np.ndarray, method: str, nlist: Optional[int], nprobe: int, hnsw_m: int,
                 ef_search: int) -> "faiss.Index":
    n, d = x.shape
    if method == "exact":
        index = faiss.IndexFlatL2(d)
        index.add(x)
    elif method == "ivf":
        if nlist is None:
            nlist = max(1, min(int(round(np.sqrt(n))), n // 39))
        index = faiss.index_factory(d, f"IVF{nlist},Flat", faiss.METRIC_L2)
        # k-means starts from faiss's fixed seed, so the lists (and results) are reproducible.
        index.train(x)
        index.add(x)
        index.nprobe = min(nprobe, nlist)
    else:
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_L2)
        index.hnsw.efSearch = ef_search
        # Parallel insertion makes the graph depend on thread timing; one thread keeps it (and
        # so the neighbours) reproducible. The search stays parallel.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            index.add(x)
        finally:
            faiss.omp_set_num_threads(threads)
    return index


def _knn_torch(x: torch.Tensor, k: int, first: int = 0, stop: Optional[int] = None,
               block: int = 4096) -> np.ndarray:
    """Exact kNN of the queries ``x[first:stop]`` by blocked matrix products on ``x``'s device
    (no faiss GPU build needed)."""
    stop = x.shape[0] if stop is None else stop
    sq = (x * x).sum(1)
    out = []
    for start in range(first, stop, block):
        q = x[start:min(start + block, stop)]
        # ||q - y||^2 minus the per-query constant ||q||^2: same order, one product.
        dist = sq[None, :] - 2.0 * (q @ x.T)
        out.append(dist.topk(k, dim=1, largest=False, sorted=True).indices.cpu())
    return torch.cat(out).numpy().astype(np.int64, copy=False)


def _self_first(rank: np.ndarray, first: int = 0) -> np.ndarray:
    """Put every point first in its own list (moved there, or inserted dropping the last);
    row ``r`` is point ``first + r``."""
    n, k = rank.shape
    own = np.arange(first, first + n)
    bad = np.flatnonzero(rank[:, 0] != own)
    if bad.size == 0:
        return rank
    rows = rank[bad]
    is_self = rows == own[bad, None]
    # Drop the point itself where present, else the farthest neighbour, then prepend it.
    drop = np.where(is_self.any(1), is_self.argmax(1), k - 1)
    keep = np.ones_like(is_self)
    keep[np.arange(bad.size), drop] = False
    rank = rank.copy()
    rank[bad] = np.concatenate([own[bad, None], rows[keep].reshape(bad.size, k - 1)], axis=1)
    return rank
