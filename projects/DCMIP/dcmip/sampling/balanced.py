"""P x K samplers: P groups (proxies or clusters) per batch, K images each (METHODS §2)."""
from typing import Iterator, List

import numpy as np

from .base import SAMPLER_REGISTRY, PseudoLabelSampler, group_rows


class _GroupBalancedSampler(PseudoLabelSampler):
    """Shuffle the groups; for each, K of its images: without repetition when it has at least
    K, otherwise its list repeated K times, shuffled, cut to K. Batches are consecutive runs of
    ``batch_size`` indices over these passes."""

    def group_labels(self) -> np.ndarray:
        raise NotImplementedError

    def global_batches(self) -> Iterator[List[int]]:
        groups = group_rows(self.group_labels())
        k, rng = self.num_instances, self.rng
        pending: List[int] = []
        while True:
            for g in rng.permutation(len(groups)):
                rows = groups[g]
                if len(rows) >= k:
                    pending.extend(rng.choice(rows, size=k, replace=False).tolist())
                else:
                    pending.extend(rng.permutation(np.tile(rows, k))[:k].tolist())
                while len(pending) >= self.batch_size:
                    yield pending[:self.batch_size]
                    pending = pending[self.batch_size:]


@SAMPLER_REGISTRY.register()
class ClusterBalancedSampler(_GroupBalancedSampler):
    """P clusters x K images (Cluster Contrast; the cluster-balanced O2CAP ablations)."""

    def group_labels(self) -> np.ndarray:
        return self.pseudo.clusters.cpu().numpy()


@SAMPLER_REGISTRY.register()
class ProxyBalancedSampler(_GroupBalancedSampler):
    """P camera-aware proxies x K images (O2CAP's PB sampling, METHODS §2)."""

    def group_labels(self) -> np.ndarray:
        return self.pseudo.proxies.cpu().numpy()
