"""The compact clustering path (issue 15 item 4) against the naive one.

dbscan() labels a symmetric graph from connected components instead of scikit-learn's
depth-first search, and jaccard_distance() keeps its indices in int32; both must give exactly
what scikit-learn and the int64 path give.
"""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import DBSCAN

from dcmip.clustering import cluster_features, dbscan, jaccard_distance, knn
from test_clustering import dense_jaccard_reference, identity_features


def _sklearn(graph, eps, min_samples):
    with warnings.catch_warnings():  # its "graph not sorted by distance" efficiency warning
        warnings.simplefilter("ignore")
        return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit_predict(graph)


def _random_symmetric(rng, n, density, diagonal):
    a = sp.random(n, n, density=density, random_state=rng, format="csr", dtype=np.float32)
    a = sp.triu(a, 1)
    a = (a + a.T).tolil()
    if diagonal == "random":  # some self-distances above eps: the point is not its own neighbour
        a.setdiag(rng.uniform(0, 1, n).astype(np.float32))
    elif diagonal == "zero":
        a.setdiag(0)
    a = a.tocsr()
    a.sort_indices()
    return a


@pytest.mark.parametrize("diagonal", ["random", "zero", "missing"])
def test_dbscan_equals_scikit_learn_on_random_symmetric_graphs(diagonal):
    rng = np.random.default_rng(["random", "zero", "missing"].index(diagonal))
    for _ in range(60):
        n = int(rng.integers(2, 250))
        graph = _random_symmetric(rng, n, rng.uniform(0.005, 0.1), diagonal)
        eps, min_samples = float(rng.uniform(0.1, 0.9)), int(rng.integers(1, 6))
        np.testing.assert_array_equal(dbscan(graph, eps, min_samples),
                                      _sklearn(graph, eps, min_samples))


def test_dbscan_border_point_goes_to_the_first_cluster_found():
    # Cores 0-3 (cluster A) and 5-8 (cluster B); border point 4 touches core 3 of A and
    # core 5 of B, and 9 touches only B. Scikit-learn's scan starts A at 0, so 4 joins A; with
    # the indices of A and B swapped it starts B first, and 4 joins B.
    edges = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (3, 4), (4, 5),
             (5, 6), (5, 7), (5, 8), (6, 7), (6, 8), (7, 8), (8, 9)]
    for perm in (np.arange(10), np.array([5, 6, 7, 8, 4, 0, 1, 2, 3, 9])):
        i, j = perm[np.array(edges)].T
        graph = sp.coo_matrix((np.full(2 * len(edges), 0.1, np.float32),
                               (np.r_[i, j], np.r_[j, i])), shape=(10, 10)).tocsr()
        graph.setdiag(0)
        labels = dbscan(graph, 0.5, 4)
        np.testing.assert_array_equal(labels, _sklearn(graph, 0.5, 4))
        first = min(perm[0], perm[5])  # lowest-index core: the cluster the scan starts first
        assert labels[perm[4]] == labels[first] == 0 and labels[perm[9]] == labels[perm[5]]
        assert labels[perm[0]] != labels[perm[5]]


def test_dbscan_asymmetric_or_unsorted_graphs_go_to_scikit_learn():
    rng = np.random.default_rng(7)
    asym = sp.random(200, 200, density=0.05, random_state=rng, format="csr", dtype=np.float32)
    np.testing.assert_array_equal(dbscan(asym, 0.5, 3), _sklearn(asym, 0.5, 3))
    sym = _random_symmetric(rng, 200, 0.05, "zero")
    # The same matrix with every row's entries in reverse column order: not canonical.
    rows = np.repeat(np.arange(200), np.diff(sym.indptr))
    order = np.lexsort((-sym.indices, rows))
    unsorted = sp.csr_matrix((sym.data[order], sym.indices[order], sym.indptr), shape=sym.shape)
    assert not unsorted.has_sorted_indices
    np.testing.assert_array_equal(dbscan(unsorted, 0.5, 3), _sklearn(sym, 0.5, 3))


@pytest.mark.parametrize("n, k1, k2, outliers", [(1500, 20, 6, 0.0), (2000, 30, 6, 0.4)])
def test_compact_pipeline_equals_naive_dense(n, k1, k2, outliers):
    x, _ = identity_features(n, outliers=outliers, seed=n)
    rank = knn(x, k1)
    jac = jaccard_distance(x, k1, k2, initial_rank=rank)
    assert jac.indices.dtype == np.int32 and jac.data.dtype == np.float32
    # An int32 initial_rank gives the very same matrix as the int64 one.
    jac32 = jaccard_distance(x, k1, k2, initial_rank=rank.astype(np.int32))
    assert np.array_equal(jac.indptr, jac32.indptr) and np.array_equal(jac.indices, jac32.indices)
    assert np.array_equal(jac.data, jac32.data)
    ref = dense_jaccard_reference(x, rank, k1, k2)
    for eps in (0.45, 0.6):
        dense = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref)
        np.testing.assert_array_equal(cluster_features(x, k1, k2, eps, initial_rank=rank), dense)
        np.testing.assert_array_equal(dbscan(jac, eps), _sklearn(jac, eps, 4))


@pytest.mark.parametrize("eps", [0.3, 0.5, 0.7])
def test_max_distance_keeps_exactly_the_near_pairs_and_the_labels(eps):
    x, _ = identity_features(1200, outliers=0.3, seed=5)
    rank = knn(x, 20)
    full = jaccard_distance(x, 20, 6, initial_rank=rank)
    cut = jaccard_distance(x, 20, 6, initial_rank=rank, max_distance=eps)
    assert cut.nnz < full.nnz and abs(cut - cut.T).max() == 0
    rows = np.repeat(np.arange(cut.shape[0]), np.diff(cut.indptr))
    np.testing.assert_array_equal(cut.data, np.asarray(full[rows, cut.indices]).ravel())
    # Exactly the entries of the full matrix within eps (one float32 step of slack) plus any
    # diagonal entry beyond it, with the same values.
    within = (full.data <= np.nextafter(np.float32(eps), np.float32(1))).sum()
    full_rows = np.repeat(np.arange(full.shape[0]), np.diff(full.indptr))
    diagonal_far = ((full.indices == full_rows) & (full.data > eps)).sum()
    assert cut.nnz == within + diagonal_far
    np.testing.assert_array_equal(dbscan(cut, eps), dbscan(full, eps))
    np.testing.assert_array_equal(cluster_features(x, 20, 6, eps, initial_rank=rank),
                                  _sklearn(full, eps, 4))


def test_max_distance_rejects_bad_values():
    x, _ = identity_features(100, seed=1)
    for bad in (-0.1, "0.5", float("nan")):
        with pytest.raises(ValueError, match="max_distance"):
            jaccard_distance(x, 10, 3, max_distance=bad)
