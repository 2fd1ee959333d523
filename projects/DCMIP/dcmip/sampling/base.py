"""Sampler interface and registry.

Samplers draw training batches over the epoch's pseudo-labelled images. Every rank draws the
same *global* batch stream from the same seed and keeps its contiguous slice, so that the
all-gathered batch in rank order is exactly the single-process batch (METHODS §5).
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

    Subclasses implement :meth:`global_batches`, an infinite iterator of global batches
    (lists of ``batch_size`` row indices), drawing all randomness from ``self.rng``.
    """

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

    def global_batches(self) -> Iterator[List[int]]:
        raise NotImplementedError

    def __iter__(self):
        local = self.batch_size // self.world_size
        lo = self.rank * local
        for batch in self.global_batches():
            yield from batch[lo:lo + local]


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
