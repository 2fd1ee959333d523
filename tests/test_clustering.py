"""The sparse clustering step against a dense implementation of METHODS.md §1-2.

The reference below is written from METHODS.md §1 step 2 with the cluster-contrast authors'
conventions (dense N×N matrices, one Python loop per image). Both sides get the same kNN
result, so every step after the kNN is compared exactly.
"""
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.cluster import DBSCAN
from sklearn.metrics import adjusted_rand_score

from dcmip.clustering import (broadcast_labels, camera_aware_proxies, cluster_features, dbscan,
                              gather_features, jaccard_distance, knn, pseudo_label_scores)
from dcmip.clustering.jaccard import half_k
from dcmip.clustering.knn import _knn_torch


# ---- the dense reference --------------------------------------------------------------------

def _k_reciprocal_neigh(initial_rank, i, k):
    forward = initial_rank[i, :k + 1]
    backward = initial_rank[forward, :k + 1]
    return forward[np.where(backward == i)[0]]


def dense_jaccard_reference(features, initial_rank, k1, k2):
    """METHODS §1 step 2 with dense (N, N) float32 matrices, as the authors compute it."""
    f = torch.as_tensor(features, dtype=torch.float32)
    n = f.shape[0]
    nn_k1 = [_k_reciprocal_neigh(initial_rank, i, k1) for i in range(n)]
    nn_half = [_k_reciprocal_neigh(initial_rank, i, int(np.around(k1 / 2))) for i in range(n)]
    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        expansion = nn_k1[i]
        for candidate in nn_k1[i]:
            cand = nn_half[candidate]
            if len(np.intersect1d(cand, nn_k1[i])) > 2 / 3 * len(cand):
                expansion = np.append(expansion, cand)
        expansion = np.unique(expansion)
        dist = 2 - 2 * torch.mm(f[i:i + 1], f[expansion].t())
        v[i, expansion] = torch.softmax(-dist, dim=1).view(-1).numpy()
    if k2 != 1:
        v = np.stack([np.mean(v[initial_rank[i, :k2], :], axis=0) for i in range(n)])
    rows_of_col = [np.where(v[:, k] != 0)[0] for k in range(n)]
    jac = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        m = np.zeros(n, dtype=np.float32)
        for k in np.where(v[i] != 0)[0]:
            m[rows_of_col[k]] += np.minimum(v[i, k], v[rows_of_col[k], k])
        jac[i] = 1 - m / (2 - m)
    jac[jac < 0] = 0
    return jac


def identity_features(n, d=48, per_id=12, noise=(0.5, 1.2), outliers=0.0, seed=0):
    """L2-normalised features of ~n/per_id identities; `outliers` of them pure noise."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // per_id), d))
    ids = rng.integers(0, centers.shape[0], n)
    sigma = rng.uniform(*noise, size=(n, 1))
    x = centers[ids] / np.sqrt(d) + sigma * rng.standard_normal((n, d)) / np.sqrt(d)
    lone = rng.random(n) < outliers
    x[lone] = rng.standard_normal((int(lone.sum()), d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), ids


def _dense(jac):
    out = np.ones(jac.shape, dtype=np.float32)
    coo = jac.tocoo()
    out[coo.row, coo.col] = coo.data
    return out


CASES = [  # n, k1, k2, fraction of pure-noise images
    (300, 20, 6, 0.0),
    (900, 30, 1, 0.0),
    (1200, 20, 1, 0.5),
    (2000, 30, 6, 0.4),
    (1500, 20, 6, 0.0),
    (700, 30, 6, 0.8),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: "n{}-k1{}-k2{}-noise{}".format(*c))
def case(request):
    n, k1, k2, outliers = request.param
    x, _ = identity_features(n, outliers=outliers, seed=n)
    rank = knn(x, k1)
    return x, rank, k1, k2, jaccard_distance(x, k1, k2, initial_rank=rank), \
        dense_jaccard_reference(x, rank, k1, k2)


def test_jaccard_equals_dense_reference(case):
    x, _, _, _, jac, ref = case
    assert isinstance(jac, sp.csr_matrix) and jac.dtype == np.float32
    assert np.abs(_dense(jac) - ref).max() <= 1e-5
    # Stored exactly where the reference is below 1; the diagonal is stored (explicit zeros).
    stored = np.zeros(ref.shape, dtype=bool)
    stored[np.repeat(np.arange(jac.shape[0]), np.diff(jac.indptr)), jac.indices] = True
    np.testing.assert_array_equal(stored, ref < 1)
    assert np.all(np.diff(jac.indptr) > 0) and (jac.diagonal() <= 1e-5).all()
    assert jac.has_sorted_indices and abs(jac - jac.T).max() == 0


@pytest.mark.parametrize("eps", [0.45, 0.6, 0.7])
def test_dbscan_labels_equal_dense_dbscan(case, eps):
    _, _, _, _, jac, ref = case
    dense = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref)
    np.testing.assert_array_equal(dbscan(jac, eps, min_samples=4), dense)


def test_noisy_cases_really_have_many_outliers():
    x, _ = identity_features(2000, outliers=0.4, seed=2000)
    labels = cluster_features(x, k1=30, k2=6, eps=0.6)
    assert (labels == -1).mean() > 0.3 and labels.max() >= 10


def test_authors_half_k_uses_bankers_rounding():
    assert [half_k(k) for k in (5, 7, 9, 20, 30)] == [2, 4, 4, 10, 15]


def test_cluster_features_is_deterministic_and_thread_independent():
    x, ids = identity_features(1500, seed=3)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = jaccard_distance(x, 20, 6)
        torch.set_num_threads(2)
        two = jaccard_distance(x, 20, 6)
    finally:
        torch.set_num_threads(threads)
    assert (one != two).nnz == 0 and np.array_equal(one.data, two.data)
    a = cluster_features(torch.from_numpy(x), k1=20, k2=6, eps=0.5)
    np.testing.assert_array_equal(a, cluster_features(x, k1=20, k2=6, eps=0.5))
    assert pseudo_label_scores(a, ids)["nmi"] > 0.9


# ---- kNN ---------------------------------------------------------------------------------

def test_knn_self_first_and_torch_path_matches_faiss():
    x, _ = identity_features(1000, seed=4)
    rank = knn(x, 20)
    assert rank.shape == (1000, 20) and rank.dtype == np.int64
    np.testing.assert_array_equal(rank[:, 0], np.arange(1000))
    np.testing.assert_array_equal(_knn_torch(torch.from_numpy(x), 20), rank)


def test_knn_puts_each_point_first_despite_duplicates():
    x, _ = identity_features(200, seed=5)
    x = np.concatenate([x, x[:10]])
    rank = knn(x, 5)
    np.testing.assert_array_equal(rank[:, 0], np.arange(210))
    np.testing.assert_array_equal(rank[200:, 1], np.arange(10))
    assert all(len(set(row)) == 5 for row in rank)


def neighbour_recall(approx, exact):
    """Mean fraction of each point's exact neighbours that the approximate search found."""
    return np.mean([len(np.intersect1d(p, q)) / exact.shape[1] for p, q in zip(approx, exact)])


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_knn_is_deterministic_and_close(method):
    """Overlapping identities (noise up to 1.2): the same neighbours on every call and at
    least 95% of the exact ones (measured: IVF 0.983, HNSW 1.0)."""
    x, _ = identity_features(2000, seed=6)
    exact = knn(x, 10)
    a, b = knn(x, 10, method), knn(x, 10, method)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[:, 0], np.arange(2000))
    assert neighbour_recall(a, exact) >= 0.95


@pytest.mark.parametrize("method", ["ivf", "hnsw"])
def test_approximate_knn_clusters_like_exact(method):
    """Well-separated identities: the approximate kNN finds the exact k1 neighbours and the
    clustering built on it agrees with the exact one (ARI >= 0.98; measured 1.0), which
    itself recovers the identities."""
    x, ids = identity_features(3000, per_id=30, noise=(0.3, 0.5), seed=7)
    exact_rank = knn(x, 20)
    assert neighbour_recall(knn(x, 20, method), exact_rank) >= 0.99
    exact = cluster_features(x, k1=20, k2=6, eps=0.5)
    approx = cluster_features(x, k1=20, k2=6, eps=0.5, knn=method)
    assert adjusted_rand_score(ids, exact) >= 0.98
    assert adjusted_rand_score(exact, approx) >= 0.98
    assert len(set(approx.tolist()) - {-1}) >= 90  # ~100 identities, not one big cluster


def test_knn_options_reach_the_search_through_cluster_features(monkeypatch):
    """UNSUP.CLUSTER.IVF_NPROBE / HNSW_EF_SEARCH travel as knn_options down to the search: one
    list visited finds fewer of the exact neighbours than all of them (which is exact), and the
    labels follow the graph they were given."""
    x, _ = identity_features(2000, seed=6)
    exact = knn(x, 10)
    one, every = knn(x, 10, "ivf", nprobe=1), knn(x, 10, "ivf", nprobe=10 ** 6)
    assert neighbour_recall(one, exact) < 0.95 and neighbour_recall(every, exact) == 1.0
    import dcmip.clustering.jaccard as jaccard_module
    seen = []
    real = jaccard_module.knn_search
    monkeypatch.setattr(jaccard_module, "knn_search", lambda *a, **kw: seen.append(kw) or real(*a, **kw))
    labels = cluster_features(x, k1=10, k2=1, eps=0.5, knn="ivf", knn_options={"nprobe": 1})
    assert seen == [{"nprobe": 1}]
    np.testing.assert_array_equal(labels, cluster_features(x, k1=10, k2=1, eps=0.5, initial_rank=one))


@pytest.mark.parametrize("kwargs, message", [({"nprobe": 0}, "IVF_NPROBE"), ({"nprobe": 2.5}, "IVF_NPROBE"),
                                             ({"ef_search": 0}, "HNSW_EF_SEARCH")])
def test_knn_refuses_bad_search_options(kwargs, message):
    x, _ = identity_features(200, seed=1)
    with pytest.raises(ValueError, match=message):
        knn(x, 5, "ivf", **kwargs)


# ---- bad input -----------------------------------------------------------------------------

@pytest.mark.parametrize("features, kwargs, message", [
    (np.zeros(10, np.float32), {}, "shape"),
    (np.full((50, 4), np.nan, np.float32), {"k1": 5}, "NaN or inf"),
    (np.full((50, 4), np.inf, np.float32), {"k1": 5}, "NaN or inf"),
    (np.ones((20, 4), np.float32), {"k1": 20}, "k1"),
    (np.ones((20, 4), np.float32), {"k1": 5, "k2": 6}, "k2"),
    (np.ones((20, 4), np.float32), {"k1": 5, "k2": 1, "knn": "annoy"}, "kNN method"),
])
def test_jaccard_rejects_bad_input(features, kwargs, message):
    with pytest.raises(ValueError, match=message):
        jaccard_distance(features, **kwargs)


def test_jaccard_rejects_initial_rank_that_does_not_fit():
    x, _ = identity_features(100, seed=7)
    rank = knn(x, 10)
    with pytest.raises(ValueError, match="shape"):
        jaccard_distance(x, 20, 6, initial_rank=rank)
    with pytest.raises(ValueError, match="itself"):
        jaccard_distance(x, 10, 6, initial_rank=rank[:, ::-1])


@pytest.mark.parametrize("eps", [0, 1, 1.5, -0.2])
def test_eps_must_lie_in_open_unit_interval(eps):
    graph = sp.identity(10, format="csr", dtype=np.float32)
    with pytest.raises(ValueError, match="eps"):
        dbscan(graph, eps)
    with pytest.raises(ValueError, match="eps"):
        cluster_features(np.eye(10, dtype=np.float32), k1=3, k2=1, eps=eps)


def test_dbscan_rejects_dense_and_non_square():
    with pytest.raises(ValueError, match="sparse"):
        dbscan(np.zeros((5, 5)), 0.5)
    with pytest.raises(ValueError, match="square"):
        dbscan(sp.csr_matrix((5, 4)), 0.5)


def test_dbscan_keeps_explicit_zeros():
    # Points 0-3 are neighbours only through explicit zeros; 4 and 5 store only themselves.
    cols = np.concatenate([np.tile(np.arange(4), 4), [4, 5]])
    indptr = np.array([0, 4, 8, 12, 16, 17, 18])
    graph = sp.csr_matrix((np.zeros(18, np.float32), cols, indptr), shape=(6, 6))
    assert graph.nnz == 18
    np.testing.assert_array_equal(dbscan(graph, 0.5, min_samples=4), [0, 0, 0, 0, -1, -1])


# ---- camera-aware proxies, scores, single-process distributed helpers ---------------------

def test_camera_aware_proxies_order_by_cluster_then_camera():
    labels = np.array([1, 0, -1, 1, 0, 1, 2, -1])
    cams = np.array([5, 3, 0, 2, 3, 5, 0, 2])
    np.testing.assert_array_equal(camera_aware_proxies(labels, cams),
                                  [2, 0, -1, 1, 0, 2, 3, -1])
    np.testing.assert_array_equal(camera_aware_proxies(torch.from_numpy(labels), cams),
                                  camera_aware_proxies(labels, cams))


def test_camera_aware_proxies_match_a_loop():
    rng = np.random.default_rng(8)
    labels, cams = rng.integers(-1, 40, 3000), rng.integers(0, 6, 3000)
    pairs = sorted({(l, c) for l, c in zip(labels, cams) if l >= 0})
    expected = [pairs.index((l, c)) if l >= 0 else -1 for l, c in zip(labels, cams)]
    np.testing.assert_array_equal(camera_aware_proxies(labels, cams), expected)


def test_camera_aware_proxies_reject_bad_input():
    with pytest.raises(ValueError, match="same length"):
        camera_aware_proxies(np.zeros(3, int), np.zeros(4, int))
    with pytest.raises(ValueError, match="integers"):
        camera_aware_proxies(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match="-1"):
        camera_aware_proxies(np.array([-2, 0]), np.zeros(2, int))


def test_pseudo_label_scores():
    true = np.array([0, 0, 1, 1, 2, 2])
    perfect = pseudo_label_scores(np.array([5, 5, 3, 3, -1, -1]), true)
    assert perfect["nmi"] == pytest.approx(1) and perfect["ari"] == pytest.approx(1)
    assert perfect["clusters"] == 2 and perfect["outliers"] == 2
    assert np.isnan(pseudo_label_scores(np.full(6, -1), true)["nmi"])


def test_distributed_helpers_without_process_group():
    feats = torch.arange(12.0).view(6, 2)
    out = gather_features(feats[[3, 1, 0, 5, 4, 2, 3]], [3, 1, 0, 5, 4, 2, 3], 6)
    assert torch.equal(out, feats)
    with pytest.raises(ValueError, match="extracted by no rank"):
        gather_features(feats[:4], [0, 1, 2, 3], 6)
    np.testing.assert_array_equal(broadcast_labels(torch.tensor([0, -1, 1])), [0, -1, 1])
