"""O2CAP's losses and associations as pure tensor functions (METHODS §2; Wang et al., TIP 2022).

Notation follows the paper: ``f`` the (B, d) L2-normalised batch features, ``K'`` the (Z, d)
camera-aware proxy memory, ``K`` the (C, d) cluster memory of the baselines, ``s = f K'^T / tau``
the proxy scores, ỹ / z̃ / c an image's cluster, proxy and camera. Proxy-level maps are
``proxy_cluster`` (Z,) and ``proxy_cam`` (Z,).

Every loss function returns the per-image terms ℓ_i, shape (B,); :func:`per_camera_mean` turns
them into the batch loss the way the authors' code does.

Positive sets (P1, P2, P3 of the paper) are :class:`ProxySet` s: a few padded indices per image
rather than (B, Z) masks, because a positive set holds at most one proxy per camera (P1) or K2
proxies (P2). The contrastive terms gather the |P| + K1 scores they need from one top-k search
per ranking similarity, shared by the losses (:func:`hard_negative_candidates`). Every shape is
fixed by the inputs' shapes and the hyper-parameters: no per-image loop, no ``nonzero`` /
``unique``, no host-device synchronisation.

Nothing here imports fastreid.
"""
import functools
import itertools
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from ..updates import occurrence_index

#: Order of the entries returned by :func:`association_statistics` (the paper's Fig. 5).
ASSOCIATION_STATISTICS = ("iou", "precision_offline", "precision_online", "precision_union",
                          "recall_offline", "recall_online", "recall_union")


class ProxySet(NamedTuple):
    """One set of proxies (or clusters) per row, padded to a common width M.

    ``index`` (R, M) holds the members, distinct, in the slots where ``valid`` (R, M) is True.
    In a row with members slot 0 is valid and every invalid slot repeats its index, so every
    index is in range. The positive sets of the losses always have members.
    """
    index: torch.Tensor
    valid: torch.Tensor

    def size(self) -> torch.Tensor:
        """(R,) the number of members of each row."""
        return self.valid.sum(dim=1)


def camera_counts(cams: torch.Tensor, num_cams: int) -> torch.Tensor:
    """(num_cams,) float count of the batch's images per camera (sync-free: fixed size)."""
    return torch.zeros(num_cams, device=cams.device).index_add_(0, cams, torch.ones(cams.shape, device=cams.device))


def camera_mean_weights(cams: torch.Tensor, num_cams: int, counts: Optional[torch.Tensor] = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B,) ``1 / n_{c_i}``, with n_c the images of camera c in the batch: ``ℓ @ weights`` is
    :func:`per_camera_mean`.

    Args:
        cams: (B,) camera of each image, in [0, num_cams).
        num_cams: number of cameras of the dataset; a fixed size keeps the reduction sync-free.
        counts: (num_cams,) images per camera of the whole batch when the images are one
            process's share of it (default: :func:`camera_counts` of ``cams``).
        dtype: of the weights (the losses').
    """
    if counts is None:
        counts = camera_counts(cams, num_cams)
    # Every camera of ``cams`` has count >= 1; the clamp only guards the cameras absent.
    return counts.to(dtype).clamp(min=1).reciprocal().index_select(0, cams)


def per_camera_mean(loss_per_image: torch.Tensor, cams: torch.Tensor, num_cams: int,
                    counts: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Batch reduction of every O2CAP loss (METHODS §2, and Eq. 9 as printed): group the batch
    by camera and sum, over the cameras present, the mean of ℓ over that camera's images, i.e.
    ``Σ_i ℓ_i / n_{c_i}``: one product with :func:`camera_mean_weights`. With ``counts`` of the
    whole batch, the results of the processes sharing it add up to the whole batch's.

    Args:
        loss_per_image: (B,) ℓ_i, or (L, B) for L losses reduced at once (result (L,)).
        cams, num_cams, counts: as :func:`camera_mean_weights`.
    """
    return loss_per_image @ camera_mean_weights(cams, num_cams, counts, loss_per_image.dtype)


def hard_negative_candidates(negative_rank: torch.Tensor, k1: int, *positive_sets: ProxySet) -> torch.Tensor:
    """(B, K) the K best-ranked entries of every row, best first, with K = K1 + the widest of
    ``positive_sets`` (or all Z entries if fewer): enough to hold the K1 best entries outside
    any of those sets, so one top-k search serves every loss that ranks by the same similarity.

    Args:
        negative_rank: (B, Z) the similarity that picks the hard negatives (no gradient).
        k1: K1.
        positive_sets: the positive sets whose negatives will be drawn from the candidates.
    """
    width = max(p.index.shape[1] for p in positive_sets)
    return top_columns(negative_rank, min(k1 + width, negative_rank.shape[1]))


#: Columns per group of :func:`top_columns`' first pass.
_GROUP = 8


def top_columns(values: torch.Tensor, k: int) -> torch.Tensor:
    """(R, k) the columns of the k largest entries of every row, largest first:
    ``values.topk(k, dim=1).indices``, found in two passes when the rows are long.

    The columns are split into groups of :data:`_GROUP` (column j in group j mod G, plus one
    group per leftover column); the k largest entries of a row all lie in the k groups with
    the largest maxima (an entry of another group is exceeded by those k maxima), so a top-k
    over the (R, G) group maxima and one over the k x 8 entries of the chosen groups replace
    the top-k over all the columns, which costs twice as much at Z = 4,024, k = 56 on CPU.
    """
    rows, columns = values.shape
    groups = columns // _GROUP
    if groups + columns % _GROUP < 4 * k:
        return values.topk(k, dim=1).indices
    # (R, 8, G): entry [r, s, g] is column g + s G; the leftover columns follow as groups of one.
    maxima = values[:, :groups * _GROUP].view(rows, _GROUP, groups).amax(dim=1)
    if columns % _GROUP:
        maxima = torch.cat([maxima, values[:, groups * _GROUP:]], dim=1)
    chosen = maxima.topk(k, dim=1, sorted=False).indices
    offsets = _group_offsets(groups, values.device)
    if not columns % _GROUP:
        members = (chosen.unsqueeze(2) + offsets).view(rows, -1)
        return members.gather(1, values.gather(1, members).topk(k, dim=1).indices)
    leftover = chosen >= groups
    # A leftover group g >= G is the single column g + 7 G, in slot 0; its other slots are void.
    members = torch.where(leftover.unsqueeze(2), (chosen + (_GROUP - 1) * groups).unsqueeze(2),
                          chosen.unsqueeze(2) + offsets).view(rows, -1)
    entries = values.gather(1, members)
    entries.masked_fill_((leftover.unsqueeze(2) & (offsets > 0)).view(rows, -1), float("-inf"))
    return members.gather(1, entries.topk(k, dim=1).indices)


@functools.lru_cache(maxsize=32)
def _group_offsets(groups: int, device: torch.device) -> torch.Tensor:
    """(8,) the column offsets of a group's members in :func:`top_columns`: s G for slot s."""
    return groups * torch.arange(_GROUP, device=device)


def contrast_with_hard_negatives(scores, positives: ProxySet, candidates: torch.Tensor, k1: int) -> torch.Tensor:
    """The multi-positive contrastive term shared by Eqs. 3, 4, 6 and 8, per image:

    ``ℓ = -(1/|P|) Σ_{u∈P} log( exp(s_u) / Σ_{v∈P∪Q} exp(s_v) )``,

    with Q the first ``k1`` of the ranked ``candidates`` that are not in P.

    When an image has fewer than ``k1`` entries outside P, Q is all of them (``k1`` is clamped
    per image to the number available, as the authors' sort-and-slice selection does).

    Args:
        scores: (B, Z) ``s``, with gradient, or :class:`SparseScores`.
        positives: P, a :class:`ProxySet` over the Z columns.
        candidates: (B, K) :func:`hard_negative_candidates` computed with P among its sets.
        k1: K1.
    """
    return contrastive_terms(scores, (positives,), candidates, k1)[0]


def contrastive_terms(scores, positive_sets: Sequence[ProxySet], candidates: torch.Tensor,
                      k1: int) -> torch.Tensor:
    """(L, B) :func:`contrast_with_hard_negatives` for L positive sets whose negatives come from
    the same ``candidates`` (e.g. L_off and L_on, both ranked by s), in one pass: the (B, N)
    scores they all need (every set's positive slots side by side, then the shared candidates)
    are read with a single gather, each set's P ∪ Q is a mask over those N columns, and the
    gradient is formed directly (:class:`_MultiPositiveContrast`); with :class:`SparseScores`
    it goes straight to the features."""
    single = len(positive_sets) == 1
    index = positive_sets[0].index if single else torch.cat([p.index for p in positive_sets], dim=1)
    valid = positive_sets[0].valid if single else torch.cat([p.valid for p in positive_sets], dim=1)
    dtype = scores.detach().dtype
    widths = tuple(p.index.shape[1] for p in positive_sets)
    # (B, M, K) whether slot m holds candidate k. An invalid slot repeats a member of its row
    # (ProxySet), so it adds no candidate that a valid slot does not: no masking by ``valid``.
    hits = index.unsqueeze(2) == candidates.unsqueeze(1)
    # (B, L, K): the candidates outside each set.
    if single:
        outside = hits.any(dim=1, keepdim=True).logical_not_()
    else:
        outside = torch.stack([hits[:, start:stop].any(dim=1) for start, stop in _slot_ranges(widths)],
                              dim=1).logical_not_()
    # Q: the candidates outside P whose rank among those is at most K1.
    q_valid = outside & (outside.cumsum(dim=2) <= k1)
    positive = valid.unsqueeze(1) & _slot_owner(widths, index.device)
    positive_weight = positive.to(dtype)
    positive_weight /= positive_weight.sum(dim=2, keepdim=True)  # 1/|P| on P, 0 elsewhere
    members = torch.cat([positive, q_valid], dim=2)
    columns = torch.cat([index, candidates], dim=1)
    if isinstance(scores, SparseScores):
        terms = _MultiPositiveContrast.apply(scores.features, scores.values, scores.memory, columns, members,
                                             positive_weight)
    else:
        terms = _MultiPositiveContrast.apply(scores.gather(1, columns), None, None, None, members, positive_weight)
    return terms.t()


@functools.lru_cache(maxsize=32)
def _slot_ranges(widths: Tuple[int, ...]) -> Tuple[Tuple[int, int], ...]:
    """The (start, stop) slots of each set, the sets' slots side by side."""
    stops = tuple(itertools.accumulate(widths))
    return tuple(zip((0,) + stops[:-1], stops))


@functools.lru_cache(maxsize=32)
def _slot_owner(widths: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """(L, Σ widths) True where slot m belongs to set l (the sets' slots side by side). A
    constant of the configuration, made once instead of a few operations per step."""
    owner = torch.zeros(len(widths), sum(widths), dtype=torch.bool, device=device)
    for row, (start, stop) in enumerate(_slot_ranges(widths)):
        owner[row, start:stop] = True
    return owner


@functools.lru_cache(maxsize=8)
def _minus_infinity(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """-inf as a 0-d tensor: ``torch.where`` with a Python float wraps it anew at every call."""
    return torch.tensor(float("-inf"), dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def _bag_offsets(bags: int, width: int, device: torch.device) -> torch.Tensor:
    """The start of every bag of ``width`` entries in a flat ``embedding_bag`` input (what it
    builds with an ``arange`` at every call when given (bags, width) indices)."""
    return torch.arange(0, bags * width, width, device=device)


class _MultiPositiveContrast(torch.autograd.Function):
    """The (B, L) terms of :func:`contrastive_terms`, with their gradient ``softmax over P ∪ Q -
    1/|P| on P`` formed in the forward pass: a handful of operations instead of autograd's
    trace through the masking and log-sum-exp.

    Dense: ``source`` (B, N) holds the gathered scores (``values``, ``memory``, ``columns``
    None). Sparse: ``source`` is ``f / tau`` (B, d), the scores are read from ``values`` (B, Z)
    at ``columns`` (B, N), and the gradient ``Σ_j g_ij K[columns_ij]`` is summed straight from
    the memory rows (``embedding_bag``), never through a (B, Z) gradient. ``members`` (B, L, N)
    marks each set's P ∪ Q; ``positive_weight`` (B, L, M) holds 1/|P| on the first M columns."""

    @staticmethod
    def forward(ctx, source, values, memory, columns, members, positive_weight):
        gathered = source if memory is None else values.gather(1, columns)
        logits = torch.where(members, gathered.unsqueeze(1), _minus_infinity(gathered.dtype, gathered.device))
        log_normaliser = logits.logsumexp(dim=2)
        width = positive_weight.shape[2]
        mean_positive = (positive_weight * gathered[:, :width].unsqueeze(1)).sum(dim=2)
        # d ℓ / d s: the softmax (exactly 0 outside P ∪ Q), minus 1/|P| on P.
        grad = logits.sub_(log_normaliser.unsqueeze(2)).exp_()
        grad[:, :, :width].sub_(positive_weight)
        ctx.save_for_backward(grad, memory, columns)
        ctx.source_dtype = source.dtype
        return log_normaliser - mean_positive

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_terms: torch.Tensor):
        grad, memory, columns = ctx.saved_tensors
        # Every set reads the same N columns: their gradients add up.
        grad = torch.bmm(grad_terms.unsqueeze(1), grad).squeeze(1)
        if memory is not None:
            # Padded slots repeat a column and carry a zero gradient: they add exact zeros.
            bags, width = columns.shape
            grad = F.embedding_bag(columns.view(-1), memory, _bag_offsets(bags, width, columns.device),
                                   per_sample_weights=_as_dtype(grad, memory.dtype).view(-1), mode="sum")
        return _as_dtype(grad, ctx.source_dtype), None, None, None, None, None


def _as_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor.to(dtype)`` without the call when it is already (a few microseconds a step)."""
    return tensor if tensor.dtype == dtype else tensor.to(dtype)


def group_table(proxy_group: torch.Tensor, num_groups: int) -> ProxySet:
    """(G, M) the proxies of every group (cluster or camera) in ascending order, M = the most
    proxies of one group. Slot 0 of a group with proxies is valid and pads its row; a group
    without proxies has no valid slot. Built once per epoch: it reads M back to the host."""
    slot = occurrence_index(proxy_group)
    width = int(slot.max()) + 1
    index = torch.zeros(num_groups, width, dtype=torch.long, device=proxy_group.device)
    index[proxy_group, slot] = torch.arange(len(proxy_group), device=proxy_group.device)
    valid = torch.zeros(num_groups, width, dtype=torch.bool, device=proxy_group.device)
    valid[proxy_group, slot] = True
    return ProxySet(torch.where(valid, index, index[:, :1]), valid)


def offline_positives(clusters: torch.Tensor, table: ProxySet) -> ProxySet:
    """P1 of Eq. 4: every proxy split from the image's cluster ỹ.

    Args:
        clusters: (B,) ỹ.
        table: :func:`group_table` of the proxies by cluster.
    """
    return ProxySet(table.index.index_select(0, clusters), table.valid.index_select(0, clusters))


class _ScoresAndQueries(torch.autograd.Function):
    """``(features K^T, queries K^T)`` from one matmul, the gradient flowing to ``features``
    only: the (Z, d) memory, whose reads dominate a step at d = 2048, is read once for both."""

    @staticmethod
    def forward(ctx, features, queries, memory):
        ctx.save_for_backward(memory)
        ctx.features_dtype = features.dtype
        products = torch.cat([features, queries]) @ memory.t()
        similarities = products[len(features):]
        ctx.mark_non_differentiable(similarities)
        return products[:len(features)], similarities

    @staticmethod
    def backward(ctx, grad_scores, grad_queries):
        memory, = ctx.saved_tensors
        # Under autocast the forward product (hence its gradient) is half precision, and a
        # custom backward runs outside autocast: bring the gradient to the memory's dtype.
        return (grad_scores.to(memory.dtype) @ memory).to(ctx.features_dtype), None, None


class SparseScores(NamedTuple):
    """The scores ``s = f K^T / tau`` (B, M) for losses that read only a few entries of each
    row (the contrastive terms): ``values`` holds them without gradient; :func:`contrastive_terms`
    reads its entries from them and sends their gradient sparsely to ``features`` (``f / tau``)."""
    values: torch.Tensor
    features: torch.Tensor
    memory: torch.Tensor

    def detach(self) -> torch.Tensor:
        return self.values


def memory_scores(features: torch.Tensor, memory: torch.Tensor, temp: float,
                  queries: Optional[torch.Tensor] = None, sparse: bool = False):
    """The scores ``s = f K^T / tau`` (B, M) against a memory (proxies K' or clusters K), with
    gradient with respect to ``f``; with
    ``queries`` (Q, d), also their similarities ``queries K^T`` (Q, M), without gradient,
    from the same matmul.

    Args:
        features: (B, d) f.
        memory: (M, d) K' or K (no gradient).
        temp: tau (0.07).
        queries: e.g. :func:`balanced_query`.
        sparse: return the scores as :class:`SparseScores`, for losses that only gather a few
            entries per row: the backward pass then costs O(B x entries x d) instead of the
            (B, M) x (M, d) product.
    """
    # Scaling the (B, d) features is cheaper than scaling the (B, Z) scores.
    scaled = features / temp
    if sparse:
        memory = memory.detach()
        with torch.no_grad():
            products = (scaled if queries is None else torch.cat([scaled, queries])) @ memory.t()
        scores = SparseScores(products[:len(features)], scaled, memory)
        return scores if queries is None else (scores, products[len(features):])
    if queries is None:
        return scaled @ memory.t()
    return _ScoresAndQueries.apply(scaled, queries.detach(), memory.detach())


@torch.no_grad()
def balanced_query(features: torch.Tensor, memory: torch.Tensor, proxies: torch.Tensor,
                   weight: float) -> torch.Tensor:
    """(B, d) the query whose similarity to K'[j] is the instance-proxy balanced similarity of
    Eq. 5, ``b_j = w f·K'[j] + (1-w) K'[z̃]·K'[j] = (w f + (1-w) K'[z̃])·K'[j]``, no gradient.

    Args:
        features: (B, d) f.
        memory: (Z, d) K'.
        proxies: (B,) z̃, the image's own proxy.
        weight: w (0.15).
    """
    return weight * features.detach().to(memory.dtype) + (1.0 - weight) * memory[proxies]


@torch.no_grad()
def distinct_proxy_queries(memory: torch.Tensor, distinct: torch.Tensor, weight: float) -> torch.Tensor:
    """The proxy half of Eq. 5's balanced similarity for the batch's distinct proxies only:
    ``(1-w) K'[u]`` (U, d) for the distinct z̃ values u (:class:`~dcmip.structures.LabelGroups`'
    ``labels``); see :func:`balanced_similarity`. A batch of P proxies x K images needs P rows,
    not B.

    Args:
        memory: (Z, d) K'.
        distinct: (U,) the distinct z̃.
        weight: w.
    """
    return (1.0 - weight) * memory.index_select(0, distinct)


@torch.no_grad()
def balanced_similarity(scores: torch.Tensor, proxy_similarities: torch.Tensor, inverse: torch.Tensor,
                        temp: float, weight: float) -> torch.Tensor:
    """(B, Z) b of Eq. 5, ``b_j = w f·K'[j] + (1-w) K'[z̃]·K'[j]``, from the scores
    ``s = f K'^T / tau`` and the similarities of :func:`distinct_proxy_queries`' rows to K'
    (``proxy_similarities`` (U, Z), row ``inverse[i]`` for image i: the groups' ``inverse``)."""
    return proxy_similarities.index_select(0, inverse).add_(scores, alpha=weight * temp)


@torch.no_grad()
def online_positives(balanced: torch.Tensor, camera_table: ProxySet, k2: int,
                     filled: Optional[int] = None) -> ProxySet:
    """P2 of Eq. 6, by the camera-aware nearest-neighbour criterion: in every camera the proxy
    with the highest balanced similarity (the lowest index on a tie), then the K2 highest of
    these per-camera winners, best first.

    Cameras without proxies never win; when fewer than K2 cameras have proxies, P2 holds one
    proxy per camera that has any.

    Args:
        balanced: (B, Z) b of Eq. 5 (:func:`balanced_query` against K').
        camera_table: :func:`group_table` of the proxies by camera.
        k2: K2 (3 Market-1501 / MSMT17, 2 DukeMTMC-reID, 8 VeRi-776).
        filled: the number of cameras with proxies, when it is known on the host (the table
            is built once per epoch): with every camera filled no camera needs masking, and
            with at least K2 filled every slot of P2 is valid, which saves those operations.
    """
    batch = balanced.shape[0]
    num_cams, width = camera_table.index.shape
    # (B, cameras, proxies of the camera). A padding slot repeats the camera's slot 0, so it
    # never beats the first of its ties (max returns the first maximum): only the cameras
    # without proxies need masking, on the (B, cameras) maxima.
    per_camera = balanced.index_select(1, camera_table.index.view(-1)).view(batch, num_cams, width)
    best, slot = per_camera.max(dim=2)
    if filled is None or filled < num_cams:
        best = best.masked_fill(~camera_table.valid[:, 0], float("-inf"))
    top_value, top_cam = best.topk(min(k2, num_cams), dim=1)
    index = camera_table.index[top_cam, slot.gather(1, top_cam)]
    if filled is not None and filled >= k2:
        return ProxySet(index, _all_true(index.shape, index.device))
    # Slot 0 is the best camera overall, which has proxies; empty cameras come last.
    valid = top_value != float("-inf")
    return ProxySet(torch.where(valid, index, index[:, :1]), valid)


@functools.lru_cache(maxsize=8)
def _all_true(shape: Tuple[int, ...], device: torch.device) -> torch.Tensor:
    """A constant all-True mask (read only: every consumer of a ProxySet's ``valid`` reads it)."""
    return torch.ones(shape, dtype=torch.bool, device=device)


def merged_positives(offline: ProxySet, online: ProxySet, clusters: torch.Tensor,
                     proxy_cluster: torch.Tensor) -> ProxySet:
    """P3 = P1 ∪ P2 of Eq. 8: P1's slots, then P2's slots whose proxy is not in P1 (P1 holds
    every proxy of cluster ỹ, so a P2 proxy is in P1 exactly when its cluster is ỹ)."""
    new_online = online.valid & (proxy_cluster[online.index] != clusters.unsqueeze(1))
    index = torch.cat([offline.index, torch.where(new_online, online.index, offline.index[:, :1])], dim=1)
    return ProxySet(index, torch.cat([offline.valid, new_online], dim=1))


def offline_loss(scores: torch.Tensor, offline: ProxySet, candidates: torch.Tensor, k1: int) -> torch.Tensor:
    """L_off, Eq. 4, per image: P1 = the proxies of the image's cluster
    (:func:`offline_positives`), Q1 = the K1 proxies outside P1 with the highest ``s``.

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        offline: P1.
        candidates: :func:`hard_negative_candidates` of ``scores.detach()`` (with P1).
        k1: K1 (50).
    """
    return contrast_with_hard_negatives(scores, offline, candidates, k1)


def online_loss(scores: torch.Tensor, online: ProxySet, candidates: torch.Tensor, k1: int) -> torch.Tensor:
    """L_on, Eq. 6, per image: P2 from :func:`online_positives`, Q2 = the K1 proxies outside
    P2 ranking highest in the similarity of ``candidates``: ``s`` for the ``instance`` choice
    (the paper's Table III best row), the balanced similarity b for ``balanced`` (the authors'
    code).

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        online: P2.
        candidates: :func:`hard_negative_candidates` of ``scores.detach()`` or b (with P2).
        k1: K1.
    """
    return contrast_with_hard_negatives(scores, online, candidates, k1)


def merge_loss(scores: torch.Tensor, merged: ProxySet, candidates: torch.Tensor, k1: int) -> torch.Tensor:
    """L_merge, Eq. 8 (variant O2CAP3), per image: P3 = P1 ∪ P2 (:func:`merged_positives`) and
    Q3 = the K1 proxies outside P3 with the highest ``s`` ("K1-nearest", as Q1 is chosen).

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        merged: P3.
        candidates: :func:`hard_negative_candidates` of ``scores.detach()`` (with P3).
        k1: K1.
    """
    return contrast_with_hard_negatives(scores, merged, candidates, k1)


def intra_loss(scores: torch.Tensor, proxies: torch.Tensor, cams: torch.Tensor,
               proxy_cam: torch.Tensor) -> torch.Tensor:
    """L_intra, Eq. 9 (CAP's intra-camera loss), per image: cross entropy of a softmax over the
    proxies of the image's own camera only, target its own proxy z̃. (Eq. 9's per-camera
    normalisation 1/N_c is :func:`per_camera_mean`.)

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        proxies: (B,) z̃.
        cams: (B,) c.
        proxy_cam: (Z,) camera of each proxy.
    """
    other_camera = proxy_cam.unsqueeze(0) != cams.unsqueeze(1)
    return F.cross_entropy(scores.masked_fill(other_camera, float("-inf")), proxies, reduction="none")


def base_loss(cluster_scores: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """L_base, Eq. 2 (Baseline1), per image: cross entropy of ``f K^T / tau`` over all clusters,
    target ỹ.

    Args:
        cluster_scores: (B, C) scores against the cluster memory K.
        clusters: (B,) ỹ.
    """
    return F.cross_entropy(cluster_scores, clusters, reduction="none")


def base2_loss(cluster_scores: torch.Tensor, clusters: torch.Tensor, k1: int) -> torch.Tensor:
    """L_base2, Eq. 3 (Baseline2), per image: softmax over the own cluster ỹ and Q0, the K1
    other clusters with the highest score; target ỹ.

    Args:
        cluster_scores: (B, C) scores against the cluster memory K.
        clusters: (B,) ỹ.
        k1: K1.
    """
    own = ProxySet(clusters.unsqueeze(1), torch.ones_like(clusters, dtype=torch.bool).unsqueeze(1))
    return contrast_with_hard_negatives(cluster_scores, own,
                                        hard_negative_candidates(cluster_scores.detach(), k1, own), k1)


@torch.no_grad()
def association_statistics(offline: ProxySet, online: ProxySet, clusters: torch.Tensor,
                           proxy_cluster: torch.Tensor, true_ids: Optional[torch.Tensor] = None,
                           proxy_true_id: Optional[torch.Tensor] = None,
                           num_true: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-batch sums and counts of the association statistics of Eqs. 10-12 (Fig. 5), in the
    order of :data:`ASSOCIATION_STATISTICS`; the epoch average is ``sums / counts``.

    - IoU ``|P1 ∩ P2| / |P1 ∪ P2|``, over every image;
    - precision ``|P_r ∩ P_gt| / |P_r|`` for r = offline P1, online P2, union P3, over every image;
    - recall ``|P_r ∩ P_gt| / |P_gt|``, over the images whose P_gt is not empty (the recall of
      an image whose identity is the majority of no proxy is undefined).

    P_gt is the set of proxies whose majority true identity is the image's (the paper's
    definition). Without true identities the precision and recall entries have count 0.

    Args:
        offline: P1.
        online: P2.
        clusters: (B,) ỹ.
        proxy_cluster: (Z,) cluster of each proxy.
        true_ids: (B,) the images' true identities.
        proxy_true_id: (Z,) the majority true identity of each proxy.
        num_true: (B,) |P_gt| of each image.
    """
    batch = len(clusters)
    online_in_offline = online.valid & (proxy_cluster[online.index] == clusters.unsqueeze(1))
    if true_ids is None:
        size_off, size_on = offline.valid.sum(dim=1, dtype=torch.float64), online.valid.sum(dim=1, dtype=torch.float64)
        both = online_in_offline.sum(dim=1, dtype=torch.float64)
        sums = torch.zeros(len(ASSOCIATION_STATISTICS), dtype=torch.float64, device=clusters.device)
        counts = torch.zeros_like(sums)
        sums[0] = (both / (size_off + size_on - both)).sum()
        counts[0] = batch
        return sums, counts
    is_true_off = offline.valid & (proxy_true_id[offline.index] == true_ids.unsqueeze(1))
    is_true_on = online.valid & (proxy_true_id[online.index] == true_ids.unsqueeze(1))
    # Per image, in one reduction each: |P1|, |P1 ∩ P_gt| and |P2|, |P2 ∩ P1|, |P2 ∩ P_gt|,
    # |P2 ∩ P1 ∩ P_gt|.
    size_off, hits_off = torch.stack([offline.valid, is_true_off]).sum(dim=2, dtype=torch.float64)
    size_on, both, hits_on, hits_both = torch.stack(
        [online.valid, online_in_offline, is_true_on, is_true_on & online_in_offline]).sum(dim=2, dtype=torch.float64)
    hits = torch.stack([hits_off, hits_on, hits_off + hits_on - hits_both])
    sizes = torch.stack([size_off, size_on, size_off + size_on - both])
    has_true = num_true > 0
    # (7, B): IoU, the three precisions, the three recalls (0 where P_gt is empty).
    per_image = torch.cat([(both / sizes[2]).unsqueeze(0), hits / sizes,
                           (hits / num_true.clamp(min=1)).masked_fill_(~has_true, 0.0)])
    counts = torch.cat([per_image.new_full((4,), batch), has_true.sum(dtype=torch.float64).expand(3)])
    return per_image.sum(dim=1), counts
