"""P x K samplers: P groups (proxies or clusters) per batch, K images each (METHODS §2)."""
from typing import List

import numpy as np

from .base import SAMPLER_REGISTRY, PseudoLabelSampler, group_rows


class _GroupBalancedSampler(PseudoLabelSampler):
    """O2CAP's ``ClassUniformlySampler``: a pass shuffles the groups and takes K images of
    each: without repetition when it has at least K, otherwise its list repeated K times,
    shuffled, cut to K. Passes are cut into batches as in :class:`PseudoLabelSampler`."""

    def group_labels(self) -> np.ndarray:
        raise NotImplementedError

    def draw_pass(self) -> List[int]:
        if not hasattr(self, "_groups"):
            self._groups = group_rows(self.group_labels())
        k, rng, drawn = self.num_instances, self.rng, []
        for g in rng.permutation(len(self._groups)):
            rows = self._groups[g]
            if len(rows) >= k:
                drawn.extend(rng.choice(rows, size=k, replace=False).tolist())
            else:
                drawn.extend(rng.permutation(np.tile(rows, k))[:k].tolist())
        return drawn


@SAMPLER_REGISTRY.register()
class ClusterBalancedSampler(_GroupBalancedSampler):
    """P clusters x K images (the cluster-balanced O2CAP ablations of Table II)."""
    GROUPS = "clusters"

    def group_labels(self) -> np.ndarray:
        return self.pseudo.clusters.cpu().numpy()


@SAMPLER_REGISTRY.register()
class ProxyBalancedSampler(_GroupBalancedSampler):
    """P camera-aware proxies x K images (O2CAP's PB sampling, METHODS §2)."""
    GROUPS = "proxies"

    def group_labels(self) -> np.ndarray:
        return self.pseudo.proxies.cpu().numpy()
