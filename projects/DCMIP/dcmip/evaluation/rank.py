"""Exact re-ID ranking metrics (CMC, mAP, mINP) in blocks of queries, without sorting the gallery.

fastreid's ``eval_market1501`` argsorts every row of the full query x gallery distance matrix
and walks it in a Python loop (its Cython version is not built by pip). Every metric it reports
only needs the ranks of a query's true matches, though:

* Market rule: gallery images with the query's identity *and* camera are removed; the other
  images with its identity are its matches (``n`` of them); a query without any is skipped.
  There is no special treatment of distractors (pid 0) or junk (pid -1): like fastreid's
  ``eval_market1501``, they are ordinary identities (fastreid's datasets drop junk on loading).
* With ``r_1 < ... < r_n`` the 1-based ranks of the matches among the kept gallery images,

  - CMC: ``cmc[k] = 1`` when ``r_1 <= k + 1``, averaged over the valid queries;
  - AP  = ``(1 / n) * sum_j j / r_j``            (fastreid's ``tmp_cmc`` sum);
  - INP = ``n / r_n``, the inverse negative penalty of Ye et al., "Deep Learning for Person
    Re-identification: A Survey and Outlook" (fastreid's ``cmc[max_pos_idx] / (max_pos_idx + 1)``).

So per block of queries we compute the distances (float32, exactly fastreid's ``build_dist``
formula), take as threshold the distance of the query's farthest match, and keep only the
gallery images at or below it as candidates. A match's rank is the number of candidates that
precede it: one binary search of each candidate's key among the block's sorted match keys and a
histogram give it, without sorting the candidates.

Speed on the CPU is the float32 matrix product's: the block is computed gallery-major
(``gallery @ query_block.T``: ~1.4x the throughput of ``query_block @ gallery.T`` with MKL at
MSMT17's shape, and on our machines the same values bit for bit) with a few hundred queries per
block, and the candidates are picked from that layout without transposing it. For the cosine
metric they are picked on the similarity ``s`` (``1 - s`` is only rounded for them), with a
margin that keeps every image whose rounded distance ties the threshold.

Ties: fastreid uses ``np.argsort``'s default (introsort, SIMD-accelerated on AVX-512 in
numpy 2), whose order among equal distances is unspecified, so its AP and INP are undefined
when a match ties with a non-match. Our rule is ``np.argsort(..., kind="stable")``: equal
distances are ordered by gallery index (``-0.0 == 0.0``). Where fastreid's result is defined
(no match ties a non-match), ours equals it.
"""
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RankResult", "evaluate_rank", "default_block_size"]

METRICS = ("cosine", "euclidean")
# Distance elements per block: 128 MiB of float32 scores (~400 queries at MSMT17 size, where
# MKL's product reaches its peak); at worst 256 MiB more for the candidates' indices, when every
# gallery image is a candidate of every query (an untrained model).
_BLOCK_ELEMENTS = 1 << 25
# Candidates whose keys are built at once: ~0.3 GiB of temporaries.
_CANDIDATE_CHUNK = 1 << 23
# fl(1 - s) can tie fl(1 - s') for s' below s by at most one ulp of a value in [0, 2], 2**-23:
# similarities within this margin of the threshold are candidates, their rounded distance decides.
_COSINE_MARGIN = 1e-6


class RankResult(NamedTuple):
    """``cmc`` (max_rank,) cumulative match characteristic over the valid queries; ``mAP`` and
    ``mINP`` their means; ``all_AP`` / ``all_INP`` per query, NaN where ``valid`` is False (no
    match left after the Market rule). Fractions in [0, 1], not percent."""
    cmc: np.ndarray
    mAP: float
    mINP: float
    all_AP: np.ndarray
    all_INP: np.ndarray
    valid: np.ndarray


def default_block_size(num_gallery: int) -> int:
    """Queries per block: about ``_BLOCK_ELEMENTS`` distances."""
    return max(1, _BLOCK_ELEMENTS // max(1, num_gallery))


def _codes(query_ids, gallery_ids, device) -> tuple:
    """Joint 0-based codes of two id arrays (any dtype numpy can unique)."""
    q = np.asarray(query_ids.cpu() if torch.is_tensor(query_ids) else query_ids).reshape(-1)
    g = np.asarray(gallery_ids.cpu() if torch.is_tensor(gallery_ids) else gallery_ids).reshape(-1)
    _, inverse = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = torch.as_tensor(inverse.reshape(-1), dtype=torch.int64, device=device)
    return codes[:len(q)], codes[len(q):]


def _sortable(dist: torch.Tensor) -> torch.Tensor:
    """int64 in [0, 2**32) ordered like the float32 ``dist`` (``-0.0`` mapped to ``0.0``)."""
    bits = (dist + 0.0).view(torch.int32)  # -0.0 + 0.0 == +0.0
    # Non-negative floats order like their bits; negative ones in reverse: flip their magnitude.
    flipped = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return flipped.to(torch.int64) + (1 << 31)


def _keys(rows: torch.Tensor, dist: torch.Tensor, cols: torch.Tensor, num_gallery: int) -> torch.Tensor:
    """Strictly increasing in (row, distance, gallery index) -- the stable argsort order per
    row -- of the elements (row, col) of a block: ``((row << 32) + sortable(dist)) * num_gallery
    + col``. Fits int64 while the block has < 2**31 elements."""
    return ((rows << 32) + _sortable(dist)) * num_gallery + cols


class _Distance:
    """fastreid's ``build_dist`` for ``cosine`` / ``euclidean``, one block of queries at a time,
    with the same float32 operations (``compute_cosine_distance``, ``compute_euclidean_distance``).

    ``block`` returns gallery-major (G, b) *scores*: the similarity for cosine (the distance
    ``1 - s`` is rounded by ``distance`` only where needed), the distance for euclidean."""

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor, metric: str):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        self.cosine = metric == "cosine"
        if self.cosine:
            self.query = F.normalize(query, p=2, dim=1)
            self.gallery = F.normalize(gallery, p=2, dim=1)
        else:
            self.query, self.gallery = query, gallery
            self.query_sq = query.pow(2).sum(dim=1)
            self.gallery_sq = gallery.pow(2).sum(dim=1, keepdim=True)
        # Market rule: removed images get the score that is never a candidate.
        self.removed = float("-inf") if self.cosine else float("inf")

    def block(self, start: int, stop: int) -> torch.Tensor:
        query_t = self.query[start:stop].t()
        if self.cosine:
            return torch.mm(self.gallery, query_t)
        dist = self.gallery_sq + self.query_sq[start:stop]
        return dist.addmm_(self.gallery, query_t, beta=1, alpha=-2)

    def distance(self, scores: torch.Tensor) -> torch.Tensor:
        # 1 - s on a copy: fl(-s + 1) == fl(1 - s).
        return scores.neg().add_(1) if self.cosine else scores

    def candidates(self, scores: torch.Tensor, far: torch.Tensor, nearest_score: torch.Tensor) -> torch.Tensor:
        """(G, b) bool: every element whose distance may be <= its query's ``far`` (a superset;
        the extra ones rank after all of the query's matches and change nothing)."""
        if self.cosine:  # fl(1 - s) is non-increasing in s
            return scores >= (nearest_score - _COSINE_MARGIN)[None, :]
        return scores <= far[None, :]


class _Matches:
    """For a block of queries, the (row, gallery index) of every gallery image with the query's
    identity, split into kept matches and removed ones (same identity and camera: Market rule)."""

    def __init__(self, q_pids, g_pids, q_cams, g_cams, num_pids: int):
        self.q_pids, self.q_cams, self.g_cams = q_pids, q_cams, g_cams
        self.by_pid = torch.argsort(g_pids, stable=True)
        self.count = torch.bincount(g_pids, minlength=num_pids)
        self.start = torch.cumsum(self.count, 0) - self.count

    def __call__(self, start: int, stop: int):
        pids, cams = self.q_pids[start:stop], self.q_cams[start:stop]
        per_row = self.count[pids]
        rows = torch.repeat_interleave(torch.arange(len(pids), device=pids.device), per_row)
        first = torch.cumsum(per_row, 0) - per_row
        offset = torch.arange(len(rows), device=pids.device) - first[rows]
        cols = self.by_pid[self.start[pids][rows] + offset]
        kept = self.g_cams[cols] != cams[rows]
        return (rows[kept], cols[kept]), (rows[~kept], cols[~kept])


@torch.no_grad()
def evaluate_rank(query_feats: torch.Tensor, gallery_feats: torch.Tensor, query_pids, gallery_pids,
                  query_cams, gallery_cams, max_rank: int = 50, block_size: Optional[int] = None,
                  metric: str = "cosine") -> RankResult:
    """CMC, mAP and mINP of fastreid's ``eval_market1501`` on ``build_dist(query, gallery, metric)``.

    Args:
        query_feats, gallery_feats: (Q, D) and (G, D) features; the work runs on their device.
        query_pids, gallery_pids, query_cams, gallery_cams: identities and cameras (tensors or
            arrays of any comparable dtype).
        max_rank: CMC length (``min(max_rank, G)``, as in fastreid).
        block_size: queries per block (default: about 2**25 distances per block). Results do not
            depend on it (beyond the float32 products' rounding, which MKL keeps the same for
            blocks of ~100 queries or more).
        metric: ``"cosine"`` (fastreid's ``TEST.METRIC cosine``: ``1 - <f_q, f_g>`` of the
            L2-normalised features) or ``"euclidean"`` (squared Euclidean distance).

    Ties are ordered by gallery index (see the module docstring). Peak extra memory is the
    normalised gallery copy (cosine) plus one block and its candidates; no Q x G matrix is
    ever held.

    Raises:
        ValueError: bad shapes, non-finite features, unknown metric, or no query with a match.
    """
    if query_feats.dim() != 2 or gallery_feats.dim() != 2 or query_feats.shape[1] != gallery_feats.shape[1]:
        raise ValueError(f"Expected (Q, D) and (G, D) features, got {tuple(query_feats.shape)} and "
                         f"{tuple(gallery_feats.shape)}.")
    num_q, num_g = query_feats.shape[0], gallery_feats.shape[0]
    for name, ids, n in (("query_pids", query_pids, num_q), ("gallery_pids", gallery_pids, num_g),
                         ("query_cams", query_cams, num_q), ("gallery_cams", gallery_cams, num_g)):
        if len(ids) != n:
            raise ValueError(f"{name} has {len(ids)} entries for {n} features.")
    if num_q == 0 or num_g == 0:
        raise ValueError(f"Nothing to rank: {num_q} queries, {num_g} gallery images.")
    device = query_feats.device
    query_feats, gallery_feats = query_feats.float(), gallery_feats.to(device, torch.float32)
    # Row sums: one cheap pass; NaN or inf anywhere makes its row's sum non-finite.
    if not (torch.isfinite(query_feats.sum(1)).all() and torch.isfinite(gallery_feats.sum(1)).all()):
        raise ValueError("Features contain NaN or inf (or overflow float32); the model diverged or the "
                         "features are corrupt.")
    if num_g >= 1 << 31:
        raise ValueError(f"{num_g} gallery images: at most 2**31 - 1 are supported.")
    block_size = default_block_size(num_g) if block_size is None else int(block_size)
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}.")
    block_size = min(block_size, num_q, ((1 << 31) - 1) // num_g)  # keys fit int64
    max_rank = min(max_rank, num_g)

    q_pids, g_pids = _codes(query_pids, gallery_pids, device)
    q_cams, g_cams = _codes(query_cams, gallery_cams, device)
    matches = _Matches(q_pids, g_pids, q_cams, g_cams, int(max(q_pids.max(), g_pids.max())) + 1)
    distance = _Distance(query_feats, gallery_feats, metric)

    all_ap = torch.full((num_q,), float("nan"), dtype=torch.float64, device=device)
    all_inp = torch.full_like(all_ap, float("nan"))
    first_hits = torch.zeros(max_rank + 1, dtype=torch.int64, device=device)  # last bin: > max_rank
    for start in range(0, num_q, block_size):
        stop = min(start + block_size, num_q)
        b = stop - start
        scores = distance.block(start, stop)  # (G, b)
        (m_rows, m_cols), (r_rows, r_cols) = matches(start, stop)
        m_scores = scores[m_cols, m_rows]
        m_dist = distance.distance(m_scores)
        scores[r_cols, r_rows] = distance.removed

        # Only gallery images no farther than the query's farthest match can precede a match.
        far = torch.full((b,), float("-inf"), device=device).scatter_reduce_(0, m_rows, m_dist, "amax")
        nearest_score = torch.full((b,), float("inf"), device=device).scatter_reduce_(0, m_rows, m_scores, "amin")
        flat = distance.candidates(scores, far, nearest_score).view(-1).nonzero().squeeze(1)  # col * b + row

        # 1-based rank of each match among its query's kept gallery images: the candidates with a
        # smaller key, less those of earlier queries. A candidate precedes the j-th smallest match
        # key (0-based) iff at most j match keys are <= its key (a match is not its own candidate).
        # Both counts add up over chunks of candidates, which bounds the memory of a poor model's.
        m_keys = _keys(m_rows, m_dist, m_cols, num_g)
        m_sorted, m_order = torch.sort(m_keys)
        slots = torch.zeros(len(m_keys) + 1, dtype=torch.int64, device=device)
        per_row = torch.zeros(b, dtype=torch.int64, device=device)
        for chunk in flat.split(_CANDIDATE_CHUNK):
            cols = torch.div(chunk, b, rounding_mode="floor")
            rows = chunk - cols * b
            c_keys = _keys(rows, distance.distance(scores.view(-1)[chunk]), cols, num_g)
            slots += torch.bincount(torch.searchsorted(m_sorted, c_keys, right=True), minlength=len(m_keys) + 1)
            per_row += torch.bincount(rows, minlength=b)
        preceding = slots.cumsum(0)[:len(m_keys)]
        row_start = per_row.cumsum(0) - per_row
        rank = torch.empty_like(preceding)
        rank[m_order] = preceding - row_start[m_rows[m_order]] + 1

        # j-th match of its query (1-based), in rank order.
        order = torch.argsort(m_rows * (num_g + 1) + rank)
        m_rows, rank = m_rows[order], rank[order]
        n = torch.bincount(m_rows, minlength=b)
        j = torch.arange(len(rank), device=device) - (torch.cumsum(n, 0) - n)[m_rows] + 1
        valid = n > 0
        ap = torch.zeros(b, dtype=torch.float64, device=device).index_add_(0, m_rows, j / rank.double())
        last = torch.zeros(b, dtype=torch.int64, device=device).scatter_reduce_(0, m_rows, rank, "amax")
        first = torch.full((b,), num_g + 1, dtype=torch.int64, device=device).scatter_reduce_(
            0, m_rows, rank, "amin")
        all_ap[start:stop][valid] = ap[valid] / n[valid]
        all_inp[start:stop][valid] = n[valid] / last[valid].double()
        first_hits += torch.bincount(first[valid].clamp(max=max_rank + 1) - 1, minlength=max_rank + 1)

    all_ap, all_inp = all_ap.cpu().numpy(), all_inp.cpu().numpy()
    valid = ~np.isnan(all_ap)
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("No query has a match in the gallery (after removing same-identity, "
                         "same-camera images); check the query / gallery split.")
    cmc = np.cumsum(first_hits[:max_rank].cpu().numpy()) / num_valid
    return RankResult(cmc=cmc, mAP=float(all_ap[valid].mean()), mINP=float(all_inp[valid].mean()),
                      all_AP=all_ap, all_INP=all_inp, valid=valid)
