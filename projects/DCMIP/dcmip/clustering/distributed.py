"""Clustering under DDP: gather the features, cluster once, broadcast the labels (METHODS §5).

Each rank extracts the features of its shard of the train set; :func:`gather_features`
assembles the full (N, d) matrix in train-set order, one rank (or every rank) clusters it, and
:func:`broadcast_labels` sends that rank's labels to all, so every rank trains on identical
pseudo labels. Typical hook code::

    feats = gather_features(local_feats, local_indices, len(train_set), dst=0)
    labels = cluster_features(feats, ...) if rank == 0 else None
    labels = broadcast_labels(labels, src=0)

With every rank holding the full features (``gather_features(..., dst=None)``),
:func:`sharded_knn` splits the kNN search, the part of the clustering step that grows as N²:
each rank searches its contiguous shard of the queries against all points on its own device,
and the neighbour lists are all-gathered, so the kNN time divides by the world size and the
Jaccard step on one rank starts from exactly the single-process ``initial_rank``.

These functions are no-ops (single-process semantics) when ``torch.distributed`` is not
initialised. With the NCCL backend the collectives run on the current CUDA device; with gloo
on the CPU.
"""
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["gather_features", "broadcast_labels", "sharded_knn"]


def gather_features(local_features: torch.Tensor,
                    local_indices: Union[torch.Tensor, np.ndarray, Sequence[int]],
                    total: int, dst: Optional[int] = None) -> Optional[torch.Tensor]:
    """The (total, d) features of the whole train set, row i = image i, from every shard.

    Args:
        local_features: (n_r, d) this rank's features; shards may differ in size.
        local_indices: (n_r,) train-set index of each local row. An index may appear on
            several ranks (``DistributedSampler`` pads shards with repeats); its first
            occurrence in rank order is kept, so the result does not depend on timing.
        total: N, the train-set size; every index in [0, N) must appear on some rank.
        dst: rank that receives the result (others get ``None``); ``None`` = every rank.

    Returns:
        (total, d) tensor on ``local_features``' device and dtype, or ``None`` on ranks other
        than ``dst``.

    Raises:
        ValueError: mismatched shapes, indices outside [0, total), or images that no rank
            extracted.
    """
    indices = torch.as_tensor(np.asarray(local_indices), dtype=torch.long).cpu()
    if local_features.ndim != 2 or indices.ndim != 1 or indices.shape[0] != local_features.shape[0]:
        raise ValueError(f"local_features must be (n, d) and local_indices (n,), got "
                         f"{tuple(local_features.shape)} and {tuple(indices.shape)}")
    if indices.numel() and (indices.min() < 0 or indices.max() >= total):
        raise ValueError(f"local_indices must lie in [0, total) = [0, {total}); pass the "
                         "train-set index of each extracted image")
    if not _distributed():
        return _assemble([local_features], [indices], total)

    device = _comm_device()
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([indices.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    counts = [int(c) for c in counts]
    width = max(counts)
    # Collectives need equal shapes: pad every shard to the largest one.
    feats = torch.zeros(width, local_features.shape[1], dtype=local_features.dtype,
                        device=device)
    feats[:counts[rank]] = local_features.to(device)
    idx = torch.full((width,), -1, dtype=torch.long, device=device)
    idx[:counts[rank]] = indices.to(device)
    receives = dst is None or rank == dst
    all_feats = [torch.empty_like(feats) for _ in range(world)] if receives else None
    all_idx = [torch.empty_like(idx) for _ in range(world)] if receives else None
    if dst is None:
        dist.all_gather(all_feats, feats)
        dist.all_gather(all_idx, idx)
    else:
        dist.gather(feats, all_feats, dst=dst)
        dist.gather(idx, all_idx, dst=dst)
    if not receives:
        return None
    return _assemble([f[:c] for f, c in zip(all_feats, counts)],
                     [i[:c].cpu() for i, c in zip(all_idx, counts)],
                     total).to(local_features.device)


def broadcast_labels(labels: Union[np.ndarray, torch.Tensor, None], src: int = 0) -> np.ndarray:
    """Rank ``src``'s labels on every rank (int64 numpy); other ranks may pass ``None``.

    Without ``torch.distributed`` the labels are returned as int64 numpy.
    """
    if not _distributed():
        if labels is None:
            raise ValueError("labels is None but torch.distributed is not initialised: the "
                             "single process must pass its own labels")
        return _as_int64(labels)
    device = _comm_device()
    is_src = dist.get_rank() == src
    if is_src and labels is None:
        raise ValueError(f"rank {src} (src) must pass the labels it computed")
    values = torch.from_numpy(_as_int64(labels)).to(device) if is_src else None
    length = torch.tensor([values.numel() if is_src else 0], device=device)
    dist.broadcast(length, src=src)
    if not is_src:
        values = torch.empty(int(length), dtype=torch.long, device=device)
    dist.broadcast(values, src=src)
    return values.cpu().numpy()


def sharded_knn(features: torch.Tensor, k: int, method: str = "exact", **options) -> np.ndarray:
    """:func:`dcmip.clustering.knn.knn` of all N points, split over the ranks.

    Every rank passes the same (N, d) features; rank r searches the queries
    ``[r N / W, (r + 1) N / W)`` against all of them and the (N, k) int64 result, identical to
    the single-process ``knn(features, k, method)``, is returned on every rank. For ``ivf`` and
    ``hnsw`` every rank builds the same deterministic index, so only the search is divided.
    ``options`` go to ``knn`` (e.g. ``nprobe``).
    """
    from .knn import knn

    n = int(features.shape[0])
    if not _distributed():
        return knn(features, k, method, **options)
    world, rank = dist.get_world_size(), dist.get_rank()
    bounds = [n * r // world for r in range(world + 1)]
    local = torch.from_numpy(knn(features, k, method, rows=slice(bounds[rank], bounds[rank + 1]), **options))
    device = _comm_device()
    # Collectives need equal shapes: pad every shard to the largest one.
    width = max(b - a for a, b in zip(bounds, bounds[1:]))
    padded = torch.full((width, local.shape[1]), -1, dtype=torch.long, device=device)
    padded[:local.shape[0]] = local.to(device)
    shards = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(shards, padded)
    return torch.cat([s[:b - a] for s, a, b in zip(shards, bounds, bounds[1:])]).cpu().numpy()


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo's gather collectives want CPU ones.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _assemble(features: "list[torch.Tensor]", indices: "list[torch.Tensor]",
              total: int) -> torch.Tensor:
    feats = torch.cat(features)
    idx = torch.cat(indices).numpy()
    # First occurrence of every index (np.unique returns it): repeats never race.
    uniq, first = np.unique(idx, return_index=True)
    if uniq.shape[0] != total:
        missing = np.setdiff1d(np.arange(total), uniq)
        raise ValueError(f"{missing.shape[0]} of {total} train images were extracted by no "
                         f"rank (e.g. index {int(missing[0])}); every shard together must cover "
                         "the train set (use a sampler without drop_last)")
    out = torch.empty((total, feats.shape[1]), dtype=feats.dtype, device=feats.device)
    out[torch.from_numpy(uniq).to(feats.device)] = feats[torch.from_numpy(first).to(feats.device)]
    return out


def _as_int64(labels: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    return labels.astype(np.int64, copy=False)
