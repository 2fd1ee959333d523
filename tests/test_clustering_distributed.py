"""Cluster once under DDP: 2 gloo processes on CPU get the same labels as one process, and the
sharded kNN search gives the single-process neighbour lists."""
import numpy as np
import torch
import torch.multiprocessing as mp

from dcmip.clustering import (broadcast_labels, cluster_features, cluster_features_distributed, gather_features,
                              knn, sharded_knn)
from dcmip.clustering.knn import KNN_METHODS, _knn_torch
from gloo import free_port, gloo_group

N, WORLD = 600, 2
PARAMS = dict(k1=20, k2=6, eps=0.5, min_samples=4)


def _features():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((50, 32))
    x = centers[rng.integers(0, 50, N)] + 0.8 * rng.standard_normal((N, 32))
    return torch.from_numpy((x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32))


def _shard(rank):
    # DistributedSampler-like: interleaved shards, the shorter one padded with a repeat.
    order = np.random.default_rng(1).permutation(N)
    per_rank = -(-N // WORLD) + 1
    padded = np.concatenate([order, order[:per_rank * WORLD - N]])
    return padded[rank::WORLD]


def _worker(rank, port, out_dir):
    with gloo_group(rank, WORLD, port):
        feats = _features()
        indices = _shard(rank)
        everywhere = gather_features(feats[indices], indices, N)
        on_root = gather_features(feats[indices], torch.from_numpy(indices), N, dst=0)
        labels = cluster_features(on_root, **PARAMS) if rank == 0 else None
        labels = broadcast_labels(labels, src=0)
        # Every rank holds the full features; each searches its shard of the queries.
        normalized = torch.nn.functional.normalize(everywhere, dim=1)
        ranks = {m: sharded_knn(normalized, PARAMS["k1"], m) for m in KNN_METHODS}
        sharded_labels = cluster_features_distributed(everywhere, **PARAMS)
        np.savez(f"{out_dir}/rank{rank}.npz", everywhere=everywhere.numpy(), labels=labels,
                 root_is_none=on_root is None, sharded_labels=sharded_labels,
                 **{f"knn_{m}": r for m, r in ranks.items()})


def test_two_gloo_ranks_train_on_identical_labels(tmp_path):
    mp.spawn(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    feats = _features()
    expected = cluster_features(feats, **PARAMS)
    assert expected.max() >= 5  # a real clustering, not all outliers
    for rank in range(WORLD):
        out = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(out["everywhere"], feats.numpy())
        np.testing.assert_array_equal(out["labels"], expected)
        assert bool(out["root_is_none"]) == (rank != 0)
        np.testing.assert_array_equal(out["sharded_labels"], expected)
        normalized = torch.nn.functional.normalize(feats, dim=1)
        for method in KNN_METHODS:
            np.testing.assert_array_equal(out[f"knn_{method}"], knn(normalized, PARAMS["k1"], method))


def test_knn_rows_are_shards_of_the_full_search():
    feats = torch.nn.functional.normalize(_features(), dim=1)
    for method in KNN_METHODS:
        full = knn(feats, 20, method)
        parts = [knn(feats, 20, method, rows=slice(a, b)) for a, b in ((0, 7), (7, 301), (301, N))]
        np.testing.assert_array_equal(np.concatenate(parts), full)
        assert (full[:, 0] == np.arange(N)).all()
    # The blocked torch search (CUDA features without faiss-gpu) shards the same way.
    np.testing.assert_array_equal(np.concatenate([_knn_torch(feats, 20, 0, 301, block=64),
                                                  _knn_torch(feats, 20, 301, N, block=64)]),
                                  _knn_torch(feats, 20))
