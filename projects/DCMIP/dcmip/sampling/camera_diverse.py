"""DCMIP's camera-diverse multi-instance sampler (METHODS §4, both stages)."""
from typing import Iterator, List

import numpy as np

from .base import SAMPLER_REGISTRY, PseudoLabelSampler, group_rows


@SAMPLER_REGISTRY.register()
class CameraDiverseSampler(PseudoLabelSampler):
    """P clusters x K images, K = ``UNSUP.SAMPLER.NUM_INSTANCES`` (16; batch 256 = 16 x 16).

    The clusters are shuffled; for each, one anchor image at random, then K - 1 more of the
    cluster's images, drawn from those whose camera differs from the anchor's so that every
    group mixes cameras. The K - 1 are drawn without replacement when at least K such images
    exist and with replacement otherwise (the threshold is K, not K - 1, as in the authors'
    sampler). A cluster seen by a single camera falls back to its other images under the same
    rule, and a singleton repeats its anchor. Batches are consecutive runs of ``batch_size``
    indices over these passes; as ``batch_size`` is a multiple of K, a group never straddles
    two batches.
    """

    def global_batches(self) -> Iterator[List[int]]:
        groups = group_rows(self.pseudo.clusters.cpu().numpy())
        cams = self.pseudo.cams.cpu().numpy()
        k, rng = self.num_instances, self.rng
        pending: List[int] = []
        while True:
            for g in rng.permutation(len(groups)):
                pending.extend(self._draw_group(groups[g], cams, k, rng))
                while len(pending) >= self.batch_size:
                    yield pending[:self.batch_size]
                    pending = pending[self.batch_size:]

    @staticmethod
    def _draw_group(rows: np.ndarray, cams: np.ndarray, k: int, rng: np.random.Generator) -> List[int]:
        anchor = rng.integers(len(rows))
        others = np.delete(rows, anchor)
        pool = others[cams[others] != cams[rows[anchor]]]
        if len(pool) == 0:
            pool = others if len(others) else rows[anchor:anchor + 1]
        rest = rng.choice(pool, size=k - 1, replace=len(pool) < k)
        return [int(rows[anchor])] + rest.tolist()
