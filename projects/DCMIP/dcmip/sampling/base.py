"""Sampler interface and registry.

Samplers draw training batches over the epoch's pseudo-labelled images. Every rank draws the
same *global* batch stream from the same seed and keeps its contiguous slice, so that the
all-gathered batch in rank order is exactly the single-process batch (METHODS §5).

Batches are cut from *passes*, as the authors' loaders do it: a pass visits every group
(cluster or proxy) once in a shuffled order and lists the images drawn for it; the pass is cut
into consecutive batches of ``batch_size`` and the images left over at its end are dropped
(``DataLoader(sampler, batch_size, drop_last=True)`` re-iterated by ``IterLoader`` in the
cluster-contrast, O2CAP and DCMIP code).
"""
from typing import Iterator, List

import numpy as np
from torch.utils.data import Sampler

from fastreid.utils.registry import Registry

from ..registry import lookup
from ..structures import PseudoLabels

SAMPLER_REGISTRY = Registry("UNSUP_SAMPLER")
SAMPLER_REGISTRY.__doc__ = "Samplers over pseudo-labelled images."


class PseudoLabelSampler(Sampler):
    """Infinite stream of row indices (into :class:`PseudoLabels`) for one rank.

    Subclasses implement :meth:`draw_pass`, one pass over the groups, drawing all randomness
    from ``self.rng``; :meth:`global_batches` cuts the passes into global batches.

    ``GROUPS``: what a pass's groups are ("clusters" or "proxies"), checked against the memory
    heads' ``BATCH_GROUPS`` (:func:`dcmip.memory.base.check_batch_groups`).
    """
    GROUPS = None

    def __init__(self, pseudo: PseudoLabels, batch_size: int, num_instances: int, seed: int,
                 rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={batch_size} must be divisible by the number "
                             f"of processes ({world_size}).")
        if batch_size % num_instances:
            raise ValueError(f"SOLVER.IMS_PER_BATCH={batch_size} must be a multiple of "
                             f"UNSUP.SAMPLER.NUM_INSTANCES={num_instances}.")
        self.pseudo = pseudo
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng(seed)

    def draw_pass(self) -> List[int]:
        """Row indices of one pass over the groups, in batch order."""
        raise NotImplementedError

    def global_batches(self) -> Iterator[List[int]]:
        """Infinite iterator of global batches (lists of ``batch_size`` row indices).

        Each pass is cut into batches and its leftover dropped. A pass too short to fill one
        batch (e.g. an epoch of singleton clusters) is carried into the next instead: the
        authors' loader would raise ``StopIteration`` there, and a degenerate epoch should
        still train.
        """
        pending: List[int] = []
        while True:
            drawn = self.draw_pass()
            if not drawn:
                raise ValueError("the sampler drew an empty pass: the pseudo labels hold no images.")
            pending.extend(drawn)
            full = len(pending) // self.batch_size
            for b in range(full):
                yield pending[b * self.batch_size:(b + 1) * self.batch_size]
            if full:
                pending = []

    def __iter__(self):
        local = self.batch_size // self.world_size
        lo = self.rank * local
        for batch in self.global_batches():
            yield from batch[lo:lo + local]

    def with_positions(self) -> "PositionedSampler":
        """This rank's stream as ``(position, row)`` pairs, ``position`` the image's place in
        the global stream (batch b, slot j: ``b * batch_size + j``), whatever the world size."""
        return PositionedSampler(self)


class PositionedSampler(Sampler):
    """``(position in the global stream, row)`` for each item of a :class:`PseudoLabelSampler`
    rank's stream. The position identifies one draw of an image independently of the number
    of processes, so per-sample randomness (augmentation) can be seeded from it."""

    def __init__(self, sampler: PseudoLabelSampler):
        self.sampler = sampler

    def __iter__(self):
        s = self.sampler
        local = s.batch_size // s.world_size
        for k, row in enumerate(s):
            yield (k // local) * s.batch_size + s.rank * local + k % local, row


def group_rows(labels: np.ndarray) -> List[np.ndarray]:
    """Row indices of each label value 0..max, in ascending row order."""
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, bounds)


def build_sampler(cfg, pseudo: PseudoLabels, seed: int, rank: int = 0, world_size: int = 1):
    name = cfg.UNSUP.SAMPLER.NAME
    sampler_cls = lookup(SAMPLER_REGISTRY, name, "UNSUP.SAMPLER.NAME")
    return sampler_cls(pseudo, cfg.SOLVER.IMS_PER_BATCH, cfg.UNSUP.SAMPLER.NUM_INSTANCES, seed,
                       rank=rank, world_size=world_size)
