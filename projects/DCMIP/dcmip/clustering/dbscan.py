"""DBSCAN on the sparse Jaccard graph (METHODS §1 step 3)."""
import numpy as np
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

__all__ = ["dbscan"]


def dbscan(distances: sp.spmatrix, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN with a precomputed sparse distance matrix, labels identical to the dense run.

    METHODS §1 step 3 (the authors call ``DBSCAN(eps, min_samples=4, metric="precomputed")``
    on the dense Jaccard matrix). On a sparse matrix scikit-learn treats a pair that is not
    stored as not a neighbour and an explicit zero as distance 0; since ``eps < 1`` and pairs
    not stored by :func:`jaccard_distance` are at distance 1, the neighbourhoods (``<= eps``),
    core points and labels equal the dense ones. Before calling scikit-learn the graph is cut
    to the entries ``<= eps`` (explicit zeros kept) and each row is sorted by distance, which
    spares scikit-learn its own per-row Python sort.

    Args:
        distances: (N, N) sparse matrix (any scipy format), e.g. from :func:`jaccard_distance`;
            the diagonal should be stored (scikit-learn stores a missing one as 0).
        eps: neighbourhood radius, in (0, 1).
        min_samples: neighbours (the point itself included) that make a core point.

    Returns:
        (N,) int64 labels: clusters 0..C-1 numbered by scikit-learn's discovery order (the
        lowest-index core point of each cluster), -1 for outliers.

    Raises:
        ValueError: a dense or non-square matrix, negative or non-finite distances, ``eps``
            outside (0, 1) or ``min_samples < 1``.
    """
    if not sp.issparse(distances):
        raise ValueError("distances must be a scipy.sparse matrix (e.g. from "
                         "jaccard_distance); a dense N×N matrix is what this module avoids")
    n = distances.shape[0]
    if distances.ndim != 2 or distances.shape[1] != n:
        raise ValueError(f"distances must be square (N, N), got {distances.shape}")
    if not 0 < eps < 1:
        raise ValueError(f"eps = {eps!r} must be in (0, 1): Jaccard distances lie in [0, 1] "
                         "and pairs not stored are at distance 1 (typical: 0.45-0.7)")
    if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)) \
            or min_samples < 1:
        raise ValueError(f"min_samples = {min_samples!r} must be a positive integer (4 in "
                         "the papers)")
    graph = sp.csr_matrix(distances)
    if graph.nnz and (not np.isfinite(graph.data).all() or graph.data.min() < 0):
        raise ValueError("distances must be finite and non-negative; build them with "
                         "jaccard_distance from finite features")
    near = np.flatnonzero(graph.data <= eps)
    rows = np.searchsorted(graph.indptr, near, side="right") - 1
    data = graph.data[near]
    order = np.lexsort((data, rows))  # by row, then by distance
    indptr = np.searchsorted(rows, np.arange(n + 1))  # rows ascend: row r starts there
    near_graph = sp.csr_matrix((data[order], graph.indices[near][order], indptr), shape=(n, n))
    labels = DBSCAN(eps=eps, min_samples=int(min_samples), metric="precomputed").fit_predict(
        near_graph)
    return labels.astype(np.int64, copy=False)
