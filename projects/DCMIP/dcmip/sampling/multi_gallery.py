"""The camera-mixing multi-instance sampler of cluster-contrast re-ID and DCMIP (METHODS §4)."""
from typing import List

import numpy as np

from .base import SAMPLER_REGISTRY, PseudoLabelSampler, group_rows


@SAMPLER_REGISTRY.register()
class RandomMultipleGallerySampler(PseudoLabelSampler):
    """The authors' ``RandomMultipleGallerySampler`` (alibaba/cluster-contrast-reid
    ``clustercontrast/utils/data/sampler.py``; DCMIP trains with the same class).

    A pass shuffles the clusters; for each, one anchor image at random, then K - 1 images
    (K = ``UNSUP.SAMPLER.NUM_INSTANCES``) drawn from the cluster's images whose camera differs
    from the anchor's, without replacement when at least **K** such images exist and with
    replacement otherwise (the authors' threshold is K, not the K - 1 drawn). With no other
    camera in the cluster, the K - 1 come from its other images under the same rule; a
    singleton contributes its anchor alone. Groups are therefore K or 1 images, so a group can
    straddle two batches; passes are cut into batches, their leftover dropped
    (:class:`PseudoLabelSampler`).
    """
    GROUPS = "clusters"

    def draw_pass(self) -> List[int]:
        if not hasattr(self, "_groups"):
            cams = self.pseudo.cams.cpu().numpy()
            self._groups = [(rows, cams[rows]) for rows in group_rows(self.pseudo.clusters.cpu().numpy())]
        k, rng, drawn = self.num_instances, self.rng, []
        for g in rng.permutation(len(self._groups)):
            rows, cams = self._groups[g]
            anchor = int(rng.integers(len(rows)))
            drawn.append(int(rows[anchor]))
            pool = rows[cams != cams[anchor]]
            if len(pool) == 0:
                pool = np.delete(rows, anchor)
                if len(pool) == 0:
                    continue
            drawn.extend(rng.choice(pool, size=k - 1, replace=len(pool) < k).tolist())
        return drawn


@SAMPLER_REGISTRY.register()
class CameraDiverseSampler(RandomMultipleGallerySampler):
    """DCMIP's sampler under the name our earlier configs used: the same rule as
    :class:`RandomMultipleGallerySampler` (DCMIP's code trains with that class)."""
