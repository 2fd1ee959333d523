"""DBSCAN on the sparse Jaccard graph (METHODS §1 step 3)."""
import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import DBSCAN

__all__ = ["dbscan"]


def dbscan(distances: sp.spmatrix, eps: float, min_samples: int = 4) -> np.ndarray:
    """DBSCAN with a precomputed sparse distance matrix, labels identical to the dense run.

    METHODS §1 step 3 (the authors call ``DBSCAN(eps, min_samples=4, metric="precomputed")``
    on the dense Jaccard matrix). On a sparse matrix scikit-learn treats a pair that is not
    stored as not a neighbour and an explicit zero as distance 0; since ``eps < 1`` and pairs
    not stored by :func:`jaccard_distance` are at distance 1, the neighbourhoods (``<= eps``),
    core points and labels equal the dense ones. On a symmetric graph (any distance, e.g.
    :func:`jaccard_distance`'s) the labels scikit-learn's depth-first search would give are
    computed from connected components (:func:`_dbscan_symmetric`), in O(nnz) vectorised
    work; an asymmetric or non-canonical graph goes to scikit-learn itself.

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
    near, symmetric = _near_graph(graph, eps)
    if not symmetric:
        return _sklearn_dbscan(graph, eps, int(min_samples))
    return _dbscan_symmetric(near, graph.diagonal() <= eps, int(min_samples))


def _near_graph(graph: sp.csr_matrix, eps: float) -> "tuple[sp.csr_matrix, bool]":
    """The pattern of the pairs ``i != j`` within ``eps`` (scikit-learn's ``<= eps``), and
    whether it is symmetric (it is for :func:`jaccard_distance`, a symmetric distance)."""
    n = graph.shape[0]
    if not graph.has_canonical_format:  # duplicates or unsorted rows: let scikit-learn decide
        return graph, False
    rows = np.repeat(np.arange(n, dtype=graph.indices.dtype), np.diff(graph.indptr))
    keep = (graph.data <= eps) & (graph.indices != rows)
    del rows
    indptr = np.concatenate([[0], np.cumsum(keep)])[graph.indptr]
    near = sp.csr_matrix((np.ones(int(indptr[-1]), dtype=np.int8), graph.indices[keep], indptr),
                         shape=(n, n))
    near.has_sorted_indices = True  # a subset of sorted rows
    transposed = near.T.tocsr()  # a counting sort: sorted rows
    symmetric = np.array_equal(near.indptr, transposed.indptr) \
        and np.array_equal(near.indices, transposed.indices)
    return near, symmetric


def _dbscan_symmetric(near: sp.csr_matrix, self_near: np.ndarray, min_samples: int) -> np.ndarray:
    """scikit-learn's DBSCAN labels on a symmetric neighbourhood graph, without its
    per-point neighbour arrays and depth-first search.

    scikit-learn (``dbscan_inner``) scans the points in index order; each core point not yet
    labelled starts a new cluster and a depth-first search labels everything density-reachable
    from it before the next cluster starts. With symmetric neighbourhoods that is:

    - a point is core when its neighbours, itself included when ``D[i, i] <= eps`` (a
      missing diagonal counts as 0, as scikit-learn's ``setdiag`` makes it), number at least
      ``min_samples``;
    - the cores of a cluster are a connected component of the core-core graph, and clusters
      are numbered by their lowest-index core (the order the scan meets them);
    - a border point (not core, next to a core) is labelled by the first cluster that reaches
      it, i.e. the lowest cluster number among its core neighbours; the rest are -1.
    """
    n = near.shape[0]
    is_core = np.diff(near.indptr) + self_near >= min_samples
    rows = np.repeat(np.arange(n, dtype=near.indices.dtype), np.diff(near.indptr))
    core_rows, core_cols = is_core[rows], is_core[near.indices]
    both = core_rows & core_cols
    core_graph = sp.csr_matrix((near.data[both], near.indices[both],
                                np.concatenate([[0], np.cumsum(both)])[near.indptr]), shape=(n, n))
    _, component = connected_components(core_graph, directed=False)
    cores = np.flatnonzero(is_core)
    # First occurrence in index order = each component's lowest-index core.
    found, first = np.unique(component[cores], return_index=True)
    number = np.empty(component.max() + 1, dtype=np.int64)
    number[found[np.argsort(first)]] = np.arange(found.shape[0])
    labels = np.full(n, -1, dtype=np.int64)
    labels[cores] = number[component[cores]]
    border = ~core_rows & core_cols  # (border point, core neighbour) pairs, by row
    border_rows = rows[border]
    if border_rows.size:
        starts = np.flatnonzero(np.diff(border_rows, prepend=-1))
        labels[border_rows[starts]] = np.minimum.reduceat(labels[near.indices[border]], starts)
    return labels


def _sklearn_dbscan(graph: sp.csr_matrix, eps: float, min_samples: int) -> np.ndarray:
    """scikit-learn's DBSCAN, for an asymmetric or non-canonical graph. Each row is first cut
    to the entries ``<= eps`` (explicit zeros kept) and sorted by distance, which spares
    scikit-learn its own per-row Python sort."""
    n = graph.shape[0]
    near = np.flatnonzero(graph.data <= eps)
    rows = np.searchsorted(graph.indptr, near, side="right") - 1
    data = graph.data[near]
    order = np.lexsort((data, rows))  # by row, then by distance
    indptr = np.searchsorted(rows, np.arange(n + 1))  # rows ascend: row r starts there
    near_graph = sp.csr_matrix((data[order], graph.indices[near][order], indptr), shape=(n, n))
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(
        near_graph)
    return labels.astype(np.int64, copy=False)
