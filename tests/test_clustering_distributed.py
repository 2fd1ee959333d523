"""Cluster once under DDP: 2 gloo processes on CPU get the same labels as one process."""
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dcmip.clustering import broadcast_labels, cluster_features, gather_features

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
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        feats = _features()
        indices = _shard(rank)
        everywhere = gather_features(feats[indices], indices, N)
        on_root = gather_features(feats[indices], torch.from_numpy(indices), N, dst=0)
        labels = cluster_features(on_root, **PARAMS) if rank == 0 else None
        labels = broadcast_labels(labels, src=0)
        np.savez(f"{out_dir}/rank{rank}.npz", everywhere=everywhere.numpy(), labels=labels,
                 root_is_none=on_root is None)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_train_on_identical_labels(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    feats = _features()
    expected = cluster_features(feats, **PARAMS)
    assert expected.max() >= 5  # a real clustering, not all outliers
    for rank in range(WORLD):
        out = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(out["everywhere"], feats.numpy())
        np.testing.assert_array_equal(out["labels"], expected)
        assert bool(out["root_is_none"]) == (rank != 0)
