"""The meta-architecture: fastreid's backbone and embedding neck, trained by a memory head."""
from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from fastreid.layers.weight_init import weights_init_kaiming
from fastreid.modeling.backbones import build_backbone
from fastreid.modeling.heads import REID_HEADS_REGISTRY, build_heads
from fastreid.modeling.heads.embedding_head import EmbeddingHead
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm

from ..memory import build_memory_head
from ..structures import LabelGroups
from .normalize import l2_normalize


@REID_HEADS_REGISTRY.register()
class UnsupEmbeddingHead(EmbeddingHead):
    """fastreid's ``EmbeddingHead`` (pooling, BN neck with frozen bias) without its classifier:
    with pseudo labels that change every epoch, the memory head scores the embedding instead."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The classifier weight would be a parameter that never gets a gradient, which DDP
        # rejects.
        del self.weight

    def reset_parameters(self) -> None:
        self.bottleneck.apply(weights_init_kaiming)

    def forward(self, features, targets=None):
        return self.bottleneck(self.pool_layer(features))[..., 0, 0]


@META_ARCH_REGISTRY.register()
class UnsupervisedReID(nn.Module):
    """Backbone -> pooling -> BN neck -> L2-normalised embedding (METHODS §1 "Model").

    In eval mode it returns the embeddings (fastreid's evaluator consumes them). In training
    it returns the memory head's losses, computed against the memory as it was before this
    step; :meth:`update_memory` applies the step's update after the optimiser step.
    """

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        self.heads = build_heads(cfg)
        self.memory = build_memory_head(cfg)
        self.register_buffer("pixel_mean", torch.tensor(cfg.MODEL.PIXEL_MEAN).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(cfg.MODEL.PIXEL_STD).view(1, -1, 1, 1), False)
        self._pending: Optional[tuple] = None

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 255] -> (B, d) L2-normalised embeddings."""
        images = (images.to(self.device, non_blocking=True) - self.pixel_mean) / self.pixel_std
        return l2_normalize(self.heads(self.backbone(images)))

    def forward(self, batched_inputs: Dict):
        features = self.embed(batched_inputs["images"])
        if not self.training:
            return features
        batch = {k: _to_device(v, self.device) for k, v in batched_inputs.items() if k != "images"}
        losses = self.memory(features.float(), batch)
        self._pending = (features.detach().float(), batch)
        return losses

    @torch.no_grad()
    def update_memory(self) -> None:
        """Apply the memory update of the last training step, with the features of every rank
        in rank order (the single-process batch order, METHODS §5)."""
        features, batch = self._pending
        self._pending = None
        if comm.get_world_size() > 1:
            features, batch = _all_gather_batch(features, batch)
        self.memory.update(features, batch)


def _all_gather_batch(features: torch.Tensor, batch: Dict):
    import torch.distributed as dist

    def gather(t):
        out = [torch.empty_like(t) for _ in range(comm.get_world_size())]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    gathered = {k: gather(v) for k, v in batch.items() if torch.is_tensor(v)}
    if "groups" in batch:
        # The global batch regrouped from every rank's host-side labels, in rank order; its
        # multiplicity is then exact, with no second exchange.
        per_rank = comm.all_gather({k: g.batch_labels for k, g in batch["groups"].items()})
        gathered["groups"] = {k: LabelGroups.from_labels(np.concatenate([labels[k] for labels in per_rank])).to(
            features.device) for k in batch["groups"]}
        if "multiplicity" in batch:
            gathered["multiplicity"] = {k: gathered["groups"][k].rounds for k in batch["multiplicity"]}
    elif "multiplicity" in batch:
        # A label's count in the global batch is at most the sum of its per-rank counts.
        per_rank = comm.all_gather(batch["multiplicity"])
        gathered["multiplicity"] = {k: sum(m[k] for m in per_rank) for k in batch["multiplicity"]}
    return gather(features), gathered


def _to_device(value, device):
    """A batch entry on the model's device: tensors, and the tensors of :class:`LabelGroups`."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict) and value and all(isinstance(v, LabelGroups) for v in value.values()):
        return {k: v.to(device, non_blocking=True) for k, v in value.items()}
    return value
