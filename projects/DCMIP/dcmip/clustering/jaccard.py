"""Exact k-reciprocal Jaccard distance (METHODS §1 step 2) without any dense N×N array.

Zhong et al., "Re-ranking person re-identification with k-reciprocal encoding" (CVPR 2017),
Eq. 4-14, as implemented by the cluster-contrast authors (``compute_jaccard_distance``,
whose numbers we reproduce). Their code holds three dense N×N matrices; here every stage is
a sparse matrix, built with vectorised numpy / scipy / torch, whose size is that of its
stored pairs, never N²:

1. ``initial_rank``: each point's ``k1`` nearest neighbours, itself first (:func:`knn`).
2. k-reciprocal sets ``R(i, k)`` (Eq. 6): ``A ∘ Aᵀ`` of the sparse kNN indicator ``A``.
3. Expansion ``R*(i, k1)`` (Eq. 7) from sparse overlap counts, and the encoding
   ``V[i, j] = softmax_j(-(2 - 2 f_i·f_j))`` over it (Eq. 8-9): a CSR matrix whose dot
   products come from a sampled dense-dense product (SDDMM), i.e. only the stored pairs.
4. Query expansion (Eq. 13): ``V <- (1/k2) Q V`` with ``Q`` the kNN indicator, a sparse matmul.
5. ``m(i, j) = Σ_k min(V[i,k], V[j,k])`` (Eq. 10-12) only for pairs that share a column
   (sparse-sparse, upper triangle by symmetry, accumulated by counting sorts: no N-wide
   scan per row), then ``J = 1 - m / (2 - m)`` clamped at 0.
"""
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Union

import numpy as np
import scipy.sparse as sp
import torch

from .knn import KNN_METHODS, _check_features, knn as knn_search
from ..timing import timed

__all__ = ["jaccard_distance", "half_k"]

ArrayLike = Union[np.ndarray, torch.Tensor]

# Candidate triples (i, j, k) per block of the min-overlap accumulation: bounds its working
# memory (~50 bytes a triple) independently of N.
_TRIPLES_PER_BLOCK = 2_000_000


def half_k(k1: int) -> int:
    """The authors' ``int(np.around(k1 / 2))``: numpy rounds halves to even (k1 = 5 -> 2)."""
    return int(np.around(k1 / 2))


def jaccard_distance(features: ArrayLike, k1: int = 20, k2: int = 6, *, knn: str = "exact",
                     knn_options: Optional[dict] = None,
                     initial_rank: Optional[np.ndarray] = None,
                     max_distance: Optional[float] = None) -> sp.csr_matrix:
    """k-reciprocal Jaccard distances between all points, as a sparse matrix.

    Reproduces the cluster-contrast authors' ``compute_jaccard_distance`` (METHODS §1 step 2)
    to float32 rounding, including their conventions:

    - ``initial_rank`` holds ``k1`` neighbours per point, the point itself first.
    - ``R(i, k1)`` (Eq. 6): their ``k_reciprocal_neigh(initial_rank, i, k1)`` slices ``k1 + 1``
      columns of an array that only has ``k1``, so j is in it when j is in i's first ``k1``
      columns and i is in j's first ``k1`` (the point itself counted).
    - ``R(c, k1/2)`` for the expansion uses ``kh = int(np.around(k1 / 2))`` (banker's
      rounding, :func:`half_k`) and takes ``kh + 1`` columns: 11 for k1 = 20, 16 for k1 = 30.
    - Expansion (Eq. 7): for each ``c`` in ``R(i, k1)`` add ``R(c, kh)`` when
      ``|R(c, kh) ∩ R(i, k1)| > 2/3 |R(c, kh)|`` (compared in float64, as Python does).
    - ``V[i] = softmax(-(2 - 2 f_i·f_j))`` over the expanded set, float32 (Eq. 8-9).
    - Query expansion (Eq. 13) when ``k2 != 1``: ``V[i] <- mean of V[initial_rank[i, :k2]]``.
    - ``J = 1 - m / (2 - m)``, ``m(i, j) = Σ_k min(V[i,k], V[j,k])``, negatives set to 0.

    Args:
        features: (N, d) features, numpy or torch (CPU or CUDA: the kNN then runs on the GPU);
            L2-normalised here in float32, as the authors' callers do before calling theirs.
        k1: k-reciprocal neighbourhood size, ``1 <= k1 < N``.
        k2: query-expansion size, ``1 <= k2 <= k1`` (1 disables it).
        knn: kNN method for ``initial_rank``: ``"exact"``, ``"ivf"`` or ``"hnsw"``
            (see :func:`dcmip.clustering.knn.knn`).
        knn_options: keyword arguments of that search, e.g. ``{"nprobe": 64}`` (IVF).
        initial_rank: optional precomputed (N, >= k1) kNN indices, column 0 the point itself
            (e.g. from :func:`knn`); only its first ``k1`` columns are used and ``knn`` is
            ignored. Lets callers time or share the kNN separately.
        max_distance: keep only the pairs with ``J <= max_distance`` (and the diagonal), with
            the same values; DBSCAN with ``eps <= max_distance`` then gives the labels of the
            full matrix while J takes the memory of its near pairs only (``cluster_features``
            passes ``eps``). ``None`` keeps every pair with ``J < 1``.

    Returns:
        (N, N) ``scipy.sparse.csr_matrix`` of float32 with sorted column indices and every
        pair whose encodings share a column stored, explicit zeros included (each point's
        distance to itself is stored). Those are exactly the pairs with ``J < 1``; a pair
        not stored is at distance 1. Symmetric. Its size is the number of pairs sharing a
        column of V: at most N·q·c for q entries per row and c per column of V (both
        O(k2·k1)), in practice hundreds to a few thousand per row.

    Raises:
        ValueError: bad shapes, NaN/inf features, ``k1`` not in ``[1, N)``, ``k2`` not in
            ``[1, k1]``, an unknown ``knn``, or an ``initial_rank`` that does not fit.
    """
    n = _check_features(features)
    for name, value, low, high in (("k1", k1, 1, n - 1), ("k2", k2, 1, k1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
                or not low <= value <= high:
            raise ValueError(f"{name} = {value!r} must be an integer in [{low}, {high}] for "
                             f"N = {n} points (k1 < N, 1 <= k2 <= k1); lower it")
    k1, k2 = int(k1), int(k2)
    if max_distance is not None and not (isinstance(max_distance, (int, float, np.floating))
                                         and 0 <= max_distance < np.inf):
        raise ValueError(f"max_distance = {max_distance!r} must be a non-negative number (the "
                         "DBSCAN eps) or None to keep every pair")
    if knn not in KNN_METHODS:
        raise ValueError(f"unknown kNN method {knn!r}; choose one of {KNN_METHODS}")
    x = torch.nn.functional.normalize(torch.as_tensor(features).detach().float(), dim=1)
    if initial_rank is None:
        with timed("knn"):
            rank = knn_search(x, k1, knn, **(knn_options or {})).astype(_index_dtype(n))
    else:
        rank = _check_initial_rank(initial_rank, n, k1)
    x = x.cpu()

    indptr, indices = _expanded_sets(rank, k1)
    v = _encoding(x, indptr, indices)
    if k2 != 1:
        v = _query_expansion(v, rank, k2)
    return _jaccard_from_encoding(v, max_distance)


def _check_initial_rank(initial_rank: np.ndarray, n: int, k1: int) -> np.ndarray:
    rank = np.asarray(initial_rank)
    if rank.ndim != 2 or rank.shape[0] != n or rank.shape[1] < k1 \
            or not np.issubdtype(rank.dtype, np.integer):
        raise ValueError(f"initial_rank must be an integer array of shape (N, >= k1) = "
                         f"({n}, >= {k1}), got {rank.dtype} {rank.shape}; compute it with "
                         "dcmip.clustering.knn(features, k1)")
    rank = rank[:, :k1]
    if rank.min() < 0 or rank.max() >= n:
        raise ValueError(f"initial_rank holds indices outside [0, {n}); it must index the rows "
                         "of features")
    rank = rank.astype(_index_dtype(n))  # checked first: the cast would wrap larger values
    if (rank[:, 0] != np.arange(n)).any():
        raise ValueError("initial_rank[:, 0] must be each point itself (its own first "
                         "neighbour); dcmip.clustering.knn guarantees it")
    return rank


def _knn_indicator(rank: np.ndarray, cols: int) -> sp.csr_matrix:
    """``A[i, j] = 1`` when j is among ``rank[i, :cols]``, canonical CSR."""
    n = rank.shape[0]
    # flatten() copies: scipy keeps int32 indices as given and sort_indices() works in place.
    a = sp.csr_matrix((np.ones(n * cols, dtype=np.int32), rank[:, :cols].flatten(),
                       np.arange(0, n * cols + 1, cols)), shape=(n, n))
    a.sort_indices()
    return a


def _reciprocal(rank: np.ndarray, cols: int) -> sp.csr_matrix:
    """Eq. 6: ``R[i, j] = 1`` when j is among ``rank[i, :cols]`` and i among ``rank[j, :cols]``.

    Row i is the authors' ``k_reciprocal_neigh(initial_rank, i, cols - 1)`` as a set.
    """
    a = _knn_indicator(rank, cols)
    return a.multiply(a.T).tocsr()


def _expanded_sets(rank: np.ndarray, k1: int) -> "tuple[np.ndarray, np.ndarray]":
    """Eq. 7: the expanded sets R*(i, k1), as sorted CSR ``(indptr, indices)``.

    With ``R`` the k1-reciprocal sets and ``H`` the half sets (rows as 0/1 sparse vectors),
    ``(R Hᵀ)[i, c] = |R(i, k1) ∩ R(c, kh)|``; candidate c in R(i, k1) is accepted when that
    exceeds 2/3 |R(c, kh)|, and R*(i) = R(i) ∪ (accepted rows of H), i.e. the pattern of
    ``R + A H`` with A the accepted (i, c) pairs. Sparse products only: O(N·k1·kh).
    """
    n = rank.shape[0]
    reciprocal = _reciprocal(rank, k1)
    half = _reciprocal(rank, min(half_k(k1) + 1, k1))
    # Restricted to c in R(i, k1); a zero overlap is never accepted, so dropping it is harmless.
    overlap = reciprocal.multiply(reciprocal @ half.T).tocsr()
    # Python's `len(a) > 2/3 * len(b)`: a float64 threshold, reproduced exactly.
    accept = overlap.data > 2 / 3 * np.diff(half.indptr)[overlap.indices]
    accepted = sp.csr_matrix(
        (overlap.data[accept], overlap.indices[accept],
         np.concatenate([[0], np.cumsum(accept)])[overlap.indptr]), shape=(n, n))
    expanded = (reciprocal + accepted @ half).tocsr()  # positive counts: no cancellation
    expanded.sort_indices()  # the authors' np.unique order, also the softmax's summation order
    return expanded.indptr.astype(np.int64), expanded.indices.astype(np.int64)


def _encoding(x: torch.Tensor, indptr: np.ndarray, indices: np.ndarray) -> sp.csr_matrix:
    """Eq. 8-9: ``V[i, j] = softmax_j(-(2 - 2 f_i·f_j))`` over R*(i, k1), float32 CSR."""
    n = x.shape[0]

    def block(start: int, stop: int) -> np.ndarray:
        lo, hi = indptr[start], indptr[stop]
        with warnings.catch_warnings():  # torch flags sparse CSR as beta on every construction
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(
                torch.from_numpy(indptr[start:stop + 1] - lo), torch.from_numpy(indices[lo:hi]),
                torch.zeros(hi - lo), size=(stop - start, n), check_invariants=False)
        # Only the stored pairs' dot products (SDDMM); torch runs it on one core, so the
        # blocks run in parallel threads.
        return torch.sparse.sampled_addmm(pattern, x[start:stop], x.T, beta=0.0).values().numpy()

    per_block = -(-indices.shape[0] // torch.get_num_threads())
    dots = np.concatenate(_run_blocks(block, _cost_blocks(np.diff(indptr), per_block)))
    logits = 2 * dots - 2  # -(2 - 2 f_i·f_j), the authors' -dist
    sizes = np.diff(indptr)
    row_max = np.maximum.reduceat(logits, indptr[:-1])  # rows are never empty: i is in R*(i)
    e = np.exp(logits - np.repeat(row_max, sizes))
    v = e / np.repeat(np.add.reduceat(e, indptr[:-1]), sizes)
    return sp.csr_matrix((v.astype(np.float32, copy=False), indices, indptr), shape=(n, n))


def _query_expansion(v: sp.csr_matrix, rank: np.ndarray, k2: int) -> sp.csr_matrix:
    """Eq. 13: ``V[i] <- mean of V[rank[i, :k2]]`` as ``(Q @ V) / k2``, float32.

    scipy sums the k2 rows in neighbour order like the authors' ``np.mean(axis=0)`` does; the
    columns are then sorted so that :func:`_jaccard_from_encoding` accumulates each pair's
    minima over k in ascending order, as the authors' loop does (same float32 rounding).
    """
    n = v.shape[0]
    q = sp.csr_matrix((np.ones(n * k2, dtype=np.float32), rank[:, :k2].ravel(),
                       np.arange(0, n * k2 + 1, k2)), shape=(n, n))
    v = (q @ v).tocsr()
    v.data /= np.float32(k2)
    v.sort_indices()
    return v


def _jaccard_from_encoding(v: sp.csr_matrix, max_distance: Optional[float] = None
                           ) -> sp.csr_matrix:
    """Eq. 10-12: ``J = 1 - m / (2 - m)``, ``m(i, j) = Σ_k min(V[i,k], V[j,k])``, clamped at 0.

    Every pair (i <= j) that shares a column k of V contributes ``min(V[i,k], V[j,k])``: for
    each stored V[i, k] the partners are the rows after i in column k (CSC rows are sorted),
    which gives the upper triangle with no pair generated twice. Each block of rows turns its
    (i, j, min) triples into a sparse matrix and sums duplicates by two counting sorts
    (CSR -> CSC -> CSR, linear time), never an N-wide dense row.
    """
    n = v.shape[0]
    # CSC layout of V plus, for every CSR entry, its position in that layout.
    order = sp.csr_matrix((np.arange(v.nnz, dtype=_index_dtype(v.nnz)), v.indices, v.indptr),
                          shape=v.shape).tocsc()
    csc_to_csr = order.data
    csc_pos = np.empty(v.nnz, dtype=csc_to_csr.dtype)
    csc_pos[csc_to_csr] = np.arange(v.nnz)
    col_rows, col_vals = order.indices, v.data[csc_to_csr]
    # Triples each CSR entry (i, k) generates: rows from i to the end of column k.
    partners = order.indptr[v.indices + 1] - csc_pos
    row_triples = np.add.reduceat(partners, v.indptr[:-1])

    def block(start: int, stop: int) -> sp.csr_matrix:
        lo, hi = v.indptr[start], v.indptr[stop]
        counts = partners[lo:hi]
        # Concatenated ranges [csc_pos, column end) of every entry, without a Python loop.
        offsets = np.repeat(csc_pos[lo:hi] - np.cumsum(counts) + counts, counts)
        offsets += np.arange(offsets.shape[0])
        mins = np.minimum(np.repeat(v.data[lo:hi], counts), col_vals[offsets])
        # int32 pointers where they fit keep scipy from widening (copying) the indices.
        row_ptr = np.zeros(stop - start + 1, dtype=_index_dtype(offsets.shape[0]))
        np.cumsum(row_triples[start:stop], out=row_ptr[1:])
        pairs = sp.csr_matrix((mins, col_rows[offsets], row_ptr), shape=(stop - start, n))
        # CSR -> CSC puts the triples of a pair next to each other, in ascending k (a stable
        # counting sort), so summing them is a linear pass in the authors' order.
        pairs = pairs.tocsc()
        pairs.sum_duplicates()
        pairs = pairs.tocsr()
        return pairs if max_distance is None else _near_pairs(pairs, max_distance)

    upper = _run_blocks(block, _cost_blocks(row_triples, _TRIPLES_PER_BLOCK))
    upper = sp.vstack(upper, format="csr")
    # The CSC arrays of the upper triangle are the CSR arrays of the lower one.
    lower = upper.tocsc()
    lower = sp.csr_matrix((lower.data, lower.indices, lower.indptr), shape=(n, n))
    # The diagonal is in both triangles (first entry of each upper row): count it once. m > 0
    # on every stored pair (V is positive on its pattern), so the sparse sum, which drops
    # zeros, loses nothing but these; J's explicit zeros appear only afterwards.
    upper.data[upper.indptr[:-1]] = 0
    jac = lower + upper
    del upper, lower
    _distance_from_overlap(jac.data)
    return jac


def _distance_from_overlap(m: np.ndarray) -> None:
    """Eq. 12: ``J = max(1 - m / (2 - m), 0)`` in place, float32: one temporary of m's size."""
    ratio = np.subtract(2, m, dtype=np.float32)
    np.divide(m, ratio, out=ratio)
    np.subtract(1, ratio, out=m)
    np.maximum(m, 0, out=m)


def _near_pairs(m: sp.csr_matrix, max_distance: float) -> sp.csr_matrix:
    """A block of rows of the upper-triangle overlaps ``m`` cut to the pairs
    whose J (computed as :func:`_distance_from_overlap` will) is within ``max_distance``,
    plus the diagonal (first in each row), which DBSCAN's self-count reads.

    The threshold is one float32 step above ``max_distance``: whether DBSCAN compares its eps
    in float32 or float64, every pair it accepts is kept; the few extra are cut by eps.
    """
    j = m.data.copy()
    _distance_from_overlap(j)
    limit = np.nextafter(np.float32(max_distance), np.float32(np.inf))
    keep = j <= limit
    keep[m.indptr[:-1][np.diff(m.indptr) > 0]] = True
    del j
    indptr = np.concatenate([[0], np.cumsum(keep)])[m.indptr].astype(m.indptr.dtype)
    return sp.csr_matrix((m.data[keep], m.indices[keep], indptr), shape=m.shape)


def _index_dtype(size: int) -> type:
    """int32 for indices below ``size`` where they fit (half the memory of int64 and what
    scipy's sparse kernels use anyway), else int64."""
    return np.int32 if size <= np.iinfo(np.int32).max else np.int64


def _cost_blocks(cost: np.ndarray, budget: int) -> "list[tuple[int, int]]":
    """Consecutive row ranges of about ``budget`` summed cost (a costlier row stands alone)."""
    before = np.cumsum(cost) - cost
    starts = np.flatnonzero(np.diff(before // budget, prepend=-1))
    bounds = np.append(starts, cost.shape[0]).tolist()
    return list(zip(bounds[:-1], bounds[1:]))


def _run_blocks(fn, blocks: "list[tuple[int, int]]") -> list:
    """``[fn(start, stop) for start, stop in blocks]`` on torch's intra-op thread count.

    numpy and scipy's sparse kernels release the GIL, so threads use every core; each block
    writes only its own rows and results keep block order, so the output is deterministic.
    """
    workers = min(len(blocks), torch.get_num_threads())
    if workers <= 1:
        return [fn(start, stop) for start, stop in blocks]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda block: fn(*block), blocks))
