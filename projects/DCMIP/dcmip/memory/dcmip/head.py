"""The DCMIP memory head (METHODS §4): discrepant cluster proxies A and B, and, in stage 2,
multi-instance proxies initialised from the EMA teacher. The losses and updates are the pure
functions of :mod:`dcmip.memory.dcmip.functional`; this module only holds the state."""
from typing import Dict

import torch

from ...structures import PseudoLabels
from ..base import MEMORY_HEAD_REGISTRY, MemoryHead
from .functional import (cluster_contrast_loss, init_instance_memory, instance_loss, replace_instances_,
                    update_proxy_b_)
from ..updates import batch_momentum_update_, hardest_momentum_update_, normalized_centroids

PROXY_A_UPDATES = ("sequential", "hardest")


@MEMORY_HEAD_REGISTRY.register()
class DiscrepantProxyMemory(MemoryHead):
    """``UNSUP.MEMORY.NAME: DiscrepantProxyMemory``.

    Stage 1 or 2 follows from the pseudo labels: :meth:`reset` builds the multi-instance
    proxies when ``pseudo.teacher_features`` is set (stage 2) and drops them otherwise.

    Losses (``forward``): ``loss_cc`` (L_cc) always, ``loss_ins`` (L_ins) in stage 2; their sum
    is the DCMIP objective. Updates (``update``), after the optimiser step: proxy A by
    ``UNSUP.MEMORY.UPDATE`` ("sequential", the authors' active code, or "hardest"), proxy B
    towards the batch mean, and the multi-instance proxies replaced from the batch.

    Config: ``UNSUP.MEMORY.TEMP`` (τ), ``UNSUP.MEMORY.MOMENTUM`` (m, both proxies),
    ``UNSUP.MEMORY.UPDATE``, ``UNSUP.DCMIP.MARGIN`` (r), ``UNSUP.DCMIP.INSTANCES_PER_CLUSTER``
    (K), ``UNSUP.SEED`` (the random draws of the instance memory; every DDP rank makes the same
    draws on the same all-gathered batch, so the memories stay identical across ranks).
    """
    # Proxy B moves to the batch mean of a cluster's images and the K instances are replaced
    # by them: both take a cluster's batch images as a sample of the whole cluster. Grouped by
    # camera-aware proxy (ProxyBalancedSampler), those are K images of one camera, and B and
    # the instances would collapse onto that camera's view (no cross-camera hardest positive).
    BATCH_GROUPS = ("clusters",)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.update_rule = cfg.UNSUP.MEMORY.UPDATE
        if self.update_rule not in PROXY_A_UPDATES:
            raise ValueError(f"UNSUP.MEMORY.UPDATE={self.update_rule!r}; choose one of {PROXY_A_UPDATES}")
        self.margin = cfg.UNSUP.DCMIP.MARGIN
        if not isinstance(self.margin, (int, float)) or self.margin < 0:
            raise ValueError(f"UNSUP.DCMIP.MARGIN={self.margin!r}; must be a number >= 0")
        self.per_cluster = cfg.UNSUP.DCMIP.INSTANCES_PER_CLUSTER
        if not isinstance(self.per_cluster, int) or self.per_cluster < 1:
            raise ValueError(f"UNSUP.DCMIP.INSTANCES_PER_CLUSTER={self.per_cluster!r}; "
                             f"must be an integer >= 1")
        self.seed = cfg.UNSUP.SEED
        self.num_clusters = 0
        # [A; B] (2C, d) and the multi-instance proxies plus a scratch row (K C + 1, d), empty
        # in stage 1. Rebuilt at every epoch start, hence not part of checkpoints.
        self.register_buffer("proxies", torch.zeros(0), persistent=False)
        self.register_buffer("instance_buffer", torch.zeros(0), persistent=False)
        self._generator = None

    @property
    def stage2(self) -> bool:
        return self.instance_buffer.numel() > 0

    @property
    def instances(self) -> torch.Tensor:
        """(K C, d) multi-instance proxies, entry ``y + k C``."""
        return self.instance_buffer[:-1]

    def _generator_on(self, device: torch.device) -> torch.Generator:
        """The head's generator on the memory's device (seeded by :meth:`reset`)."""
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device).manual_seed(self.seed)
        return self._generator

    @torch.no_grad()
    def reset(self, pseudo: PseudoLabels) -> None:
        device = self.proxies.device
        # Reseeded from (UNSUP.SEED, epoch) every epoch: every DDP rank draws the same, and a
        # resumed run draws what the uninterrupted run drew.
        self._generator_on(device).manual_seed(self.seed * 1_000_003 + pseudo.epoch)
        self.num_clusters = pseudo.num_clusters
        clusters = pseudo.clusters.to(device)
        centroids = normalized_centroids(pseudo.features.float().to(device), clusters, self.num_clusters)
        self.proxies = torch.cat([centroids, centroids])
        if pseudo.teacher_features is None:
            self.instance_buffer = torch.zeros(0, device=device)
        else:
            instances = init_instance_memory(pseudo.teacher_features.float().to(device), clusters,
                                             self.num_clusters, self.per_cluster, self._generator_on(device))
            self.instance_buffer = torch.cat([instances, instances.new_zeros(1, instances.shape[1])])

    def forward(self, features: torch.Tensor, batch: Dict) -> Dict[str, torch.Tensor]:
        labels = batch["clusters"]
        losses = {"loss_cc": cluster_contrast_loss(features, self.proxies, labels, self.temp, self.margin)}
        if self.stage2:
            losses["loss_ins"] = instance_loss(features, self.instances, labels, self.num_clusters, self.temp)
        return losses

    @torch.no_grad()
    def update(self, features: torch.Tensor, batch: Dict) -> None:
        labels = batch["clusters"]
        proxies_a, proxies_b = self.proxies[:self.num_clusters], self.proxies[self.num_clusters:]
        if self.update_rule == "sequential":
            batch_momentum_update_(proxies_a, features, batch, "clusters", self.momentum)
        else:
            hardest_momentum_update_(proxies_a, features, labels, self.momentum)
        update_proxy_b_(proxies_b, features, labels, self.momentum)
        if self.stage2:
            replace_instances_(self.instance_buffer, features, labels, self.num_clusters,
                               self._generator_on(self.instance_buffer.device))
