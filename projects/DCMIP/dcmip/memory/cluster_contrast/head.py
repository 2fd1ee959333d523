"""The Cluster Contrast memory head (METHODS §3)."""
from typing import Dict

import torch

from ...structures import PseudoLabels
from ..base import MEMORY_HEAD_REGISTRY, MemoryHead
from .functional import cluster_contrast_loss
from ..updates import batch_momentum_update_, hardest_momentum_update_, normalized_centroids

UPDATES = ("sequential", "hardest")


@MEMORY_HEAD_REGISTRY.register()
class ClusterMemory(MemoryHead):
    """C × d cluster memory; ``UNSUP.MEMORY.UPDATE`` picks the per-image ("sequential") or
    the hard ("hardest") momentum update."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.update_rule = cfg.UNSUP.MEMORY.UPDATE
        if self.update_rule not in UPDATES:
            raise ValueError(f"UNSUP.MEMORY.UPDATE={self.update_rule!r}; choose one of {UPDATES}")
        self.register_buffer("memory", torch.zeros(0), persistent=False)

    @torch.no_grad()
    def reset(self, pseudo: PseudoLabels) -> None:
        self.memory = normalized_centroids(pseudo.features.float(), pseudo.clusters.to(pseudo.features.device),
                                           pseudo.num_clusters).to(self.memory.device)

    def forward(self, features: torch.Tensor, batch: Dict) -> Dict[str, torch.Tensor]:
        return {"loss_cluster": cluster_contrast_loss(features, self.memory, batch["clusters"], self.temp)}

    @torch.no_grad()
    def update(self, features: torch.Tensor, batch: Dict) -> None:
        if self.update_rule == "sequential":
            batch_momentum_update_(self.memory, features, batch, "clusters", self.momentum)
        else:
            hardest_momentum_update_(self.memory, features, batch["clusters"], self.momentum)
