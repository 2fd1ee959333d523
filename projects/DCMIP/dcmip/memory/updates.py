"""Memory update rules shared by the proxy memories, exact and vectorised (METHODS §5).

The momentum update of every method is sequential in batch order: an image updates the entry
that the previous image of the same label already moved. Because of the normalisation it has
no closed form, but it decomposes exactly into rounds: round r applies the r-th occurrence of
every label at once (labels are unique inside a round). The number of rounds is the largest
label multiplicity of the batch (K for a P x K sampler), so a step runs K vectorised rounds
instead of B per-image updates. Round r only touches the rows whose occurrence index is r, and
at most B / (r + 1) rows can have it, so each round works on a window of that many rows.
"""
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F


def occurrence_index(labels: torch.Tensor) -> torch.Tensor:
    """For each position i, how many earlier positions carry the same label (0 for the first)."""
    n = labels.numel()
    sorted_labels, perm = torch.sort(labels, stable=True)
    pos = torch.arange(n, device=labels.device)
    is_start = torch.ones(n, dtype=torch.bool, device=labels.device)
    is_start[1:] = sorted_labels[1:] != sorted_labels[:-1]
    group_start = torch.cummax(torch.where(is_start, pos, torch.zeros_like(pos)), dim=0).values
    occ = torch.empty_like(pos)
    occ[perm] = pos - group_start
    return occ


@torch.no_grad()
def sequential_momentum_update_(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                                momentum: float, rounds: Optional[int] = None) -> torch.Tensor:
    """In place, for each (f, y) in batch order: ``memory[y] <- normalise(m memory[y] + (1-m) f)``.

    O2CAP's proxy update (METHODS §2, mu = 0.2), Cluster Contrast's (§3) and DCMIP's proxy-A
    ``sequential`` rule (§4), all with ``m`` the weight of the old entry.

    Args:
        memory: (M, d) entries, updated in place.
        features: (B, d) batch features (detached).
        labels: (B,) entry of each feature.
        momentum: m.
        rounds: an upper bound on the multiplicity of any label in ``labels``. Pass it when it
            is known on the host (e.g. the sampler's K) to avoid a device-to-host sync; extra
            rounds are no-ops.
    """
    n = labels.numel()
    # occurrence_index, from one (B, B) comparison: a batch is small, and this is 3 operations
    # where the sort-based search takes a dozen.
    occ = (labels.unsqueeze(0) == labels.unsqueeze(1)).tril_(-1).sum(dim=1)
    if rounds is None:
        rounds = int(occ.max()) + 1 if n else 0
    # Rows sorted (stably) by occurrence index: the rows of round r are the contiguous run
    # order[first[r]:first[r + 1]]. Each label occurring more than r times owns r + 1 distinct
    # rows, so at most n // (r + 1) labels do, and the run has at most that many rows: round r
    # reads a window of n // (r + 1) slots from first[r]. first[r] stays a device tensor (no
    # sync); slots past the run hold rows of later rounds, slots past n are clamped to row
    # n - 1, and both are masked out. For r beyond the true multiplicity first[r] = n and the
    # whole window is masked, so extra rounds are no-ops.
    widths = [n // (r + 1) for r in range(rounds) if n // (r + 1) > 0]
    if not widths:
        return memory
    device = labels.device
    sorted_occ, order = occ.sort(stable=True)
    first = torch.searchsorted(sorted_occ, torch.arange(len(widths), device=device))
    # Every round's window, concatenated, is prepared at once (the rounds then only read and
    # write the memory): slot t belongs to round round_of[t] at offset[t] in its window, both
    # known on the host.
    round_of = np.repeat(np.arange(len(widths)), widths)
    offset = np.arange(len(round_of)) - np.repeat(np.cumsum([0] + widths[:-1]), widths)
    round_of, offset = torch.from_numpy(np.stack([round_of, offset])).to(device)
    slots = first[round_of] + offset
    window = order[slots.clamp_max(n - 1)]
    # Only the r-th occurrence of each label moves its entry; the other rows of the window
    # add an exact zero, which keeps the write deterministic under index_add_'s duplicate
    # indices.
    active = ((occ[window] == round_of) & (slots < n)).unsqueeze(1).to(memory.dtype)
    for rows, round_features, round_active in zip(labels[window].split(widths),
                                                  features.to(memory.dtype)[window].split(widths),
                                                  active.split(widths)):
        current = memory.index_select(0, rows)
        # lerp(f, current, m) = m current + (1 - m) f, then F.normalize's division in place.
        updated = torch.lerp(round_features, current, momentum)
        updated.div_(torch.linalg.vector_norm(updated, dim=1, keepdim=True).clamp_min_(1e-12))
        memory.index_add_(0, rows, updated.sub_(current).mul_(round_active))
    return memory


@torch.no_grad()
def grouped_momentum_update_(memory: torch.Tensor, features: torch.Tensor, groups, momentum: float) -> torch.Tensor:
    """:func:`sequential_momentum_update_` with the batch grouped by label on the host
    (:class:`~dcmip.structures.LabelGroups`): each distinct label's entry is read once, moved
    through its images in batch order (round r applies every label's r-th image), and written
    once. A few operations per round and no index bookkeeping on the device.

    Args:
        memory: (M, d) entries, updated in place.
        features: (B, d) batch features (detached).
        groups: the batch's labels grouped, on ``memory``'s device.
        momentum: m, the weight of the old entry.
    """
    if not groups.rounds:
        return memory
    # (R, U, d): the r-th image of every label.
    features = features if features.dtype == memory.dtype else features.to(memory.dtype)
    ordered = features.index_select(0, groups.occurrence.flatten()).view(groups.rounds, -1, memory.shape[1])
    state = memory.index_select(0, groups.labels)
    for r, round_features in enumerate(ordered.unbind(0)):
        # lerp(f, state, m) = m state + (1 - m) f, then F.normalize's division in place.
        updated = torch.lerp(round_features, state, momentum)
        updated.div_(torch.linalg.vector_norm(updated, dim=1, keepdim=True).clamp_min_(1e-12))
        # A label with fewer than r + 1 images keeps its entry.
        state = updated if groups.complete else torch.where(groups.present[r].unsqueeze(1), updated, state)
    # Labels are distinct: one deterministic write per entry.
    return memory.index_copy_(0, groups.labels, state)


@torch.no_grad()
def batch_momentum_update_(memory: torch.Tensor, features: torch.Tensor, batch: dict, key: str,
                           momentum: float) -> torch.Tensor:
    """The sequential update of ``memory`` by the batch's ``key`` labels ("clusters" or
    "proxies"): :func:`grouped_momentum_update_` with the collation's ``groups``, else
    :func:`sequential_momentum_update_` bounded by its ``multiplicity`` (batches built by hand)."""
    groups = batch.get("groups", {}).get(key)
    if groups is not None:
        return grouped_momentum_update_(memory, features, groups, momentum)
    return sequential_momentum_update_(memory, features, batch[key], momentum, batch.get("multiplicity", {}).get(key))


@torch.no_grad()
def hardest_momentum_update_(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                             momentum: float) -> torch.Tensor:
    """In place, once per label present: ``memory[y] <- normalise(m memory[y] + (1-m) f_hard)``.

    ``f_hard`` is the batch feature of label y least similar to ``memory[y]`` (Cluster
    Contrast's "hard" variant, METHODS §3; DCMIP's proxy-A ``hardest`` rule, §4). Ties go to
    the earliest image in batch order.
    """
    features = features.to(memory.dtype)
    sim = (features * memory[labels]).sum(dim=1)
    n, num_entries = labels.numel(), memory.shape[0]
    # Per label: the minimum similarity, then the first position that attains it.
    min_sim = torch.full((num_entries,), float("inf"), dtype=sim.dtype, device=sim.device)
    min_sim.scatter_reduce_(0, labels, sim, reduce="amin")
    is_min = sim == min_sim[labels]
    pos = torch.arange(n, device=labels.device)
    first = torch.full((num_entries,), n, dtype=torch.long, device=labels.device)
    first.scatter_reduce_(0, labels, torch.where(is_min, pos, torch.full_like(pos, n)), reduce="amin")
    chosen = (first[labels] == pos).unsqueeze(1).to(memory.dtype)
    current = memory[labels]
    updated = F.normalize(momentum * current + (1.0 - momentum) * features, dim=1)
    memory.index_add_(0, labels, (updated - current) * chosen)
    return memory


def normalized_centroids(features: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(num_labels, d): the L2-normalised mean feature of each label (every memory's
    epoch-start initialisation, METHODS §1 step 4). Labels must be in [0, num_labels)."""
    sums = torch.zeros(num_labels, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels, features)
    return F.normalize(sums, dim=1)
