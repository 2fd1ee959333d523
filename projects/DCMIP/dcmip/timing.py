"""Wall time per phase of an epoch (features, kNN, Jaccard, DBSCAN, evaluation, ...).

The phases live in different hooks and in the clustering functions, so they add their time
to one process-wide tally, and :class:`dcmip.engine.profile.EpochProfileHook` reads and
clears it once per epoch. A phase's time excludes the phases nested inside it (the kNN that
``jaccard_distance`` runs is billed to "knn", not to "jaccard"), so the phases add up to the
wall time. Cheap enough to stay on: one ``perf_counter`` pair per phase.
"""
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterator, List

import torch

_totals: Dict[str, float] = defaultdict(float)
_nested: List[float] = []  # per open phase, the time spent in phases nested inside it


def _sync() -> None:
    # CUDA work is asynchronous: without a sync a phase's kernels would be billed to the next.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Add the wall time of the ``with`` body, less its nested phases, to ``phase``'s tally."""
    _sync()
    start = time.perf_counter()
    _nested.append(0.0)
    try:
        yield
    finally:
        _sync()
        elapsed = time.perf_counter() - start
        inner = _nested.pop()
        _totals[phase] += elapsed - inner
        if _nested:
            _nested[-1] += elapsed


def pop_times() -> Dict[str, float]:
    """The tallies since the last call (seconds per phase), and reset them."""
    out = dict(_totals)
    _totals.clear()
    return out


def record(phase: str, seconds: float) -> None:
    """Add ``seconds`` measured by the caller to ``phase``'s tally."""
    _totals[phase] += seconds
    if _nested:
        _nested[-1] += seconds
