"""The memory-head interface and its registry.

A memory head owns the proxies of one method and turns a batch of embeddings into losses.
Its life cycle, driven by the clustering hook and the trainer:

- ``reset(pseudo)`` at every epoch start, from the epoch-start features (METHODS §1 step 4);
- ``forward(features, batch)`` in each training step: the losses, against the memory as it
  was before the step;
- ``update(features, batch)`` after the optimiser step, with the detached features of the
  whole (all-gathered) batch in batch order.

The losses and updates themselves are pure tensor functions in the method modules; heads are
the thin stateful glue around them.
"""
from typing import Dict

import torch
from torch import nn

from fastreid.utils.registry import Registry

from ..registry import lookup
from ..structures import PseudoLabels

MEMORY_HEAD_REGISTRY = Registry("MEMORY_HEAD")
MEMORY_HEAD_REGISTRY.__doc__ = "Proxy memories that compute the unsupervised losses."


class MemoryHead(nn.Module):
    """Base class. ``batch`` is the training batch dict, with device tensors

    - ``clusters`` (B,), ``proxies`` (B,), ``camids`` (B,), ``index`` (B,) (row in the epoch's
      :class:`PseudoLabels`), and
    - ``multiplicity``: a host-side dict ``{"clusters": int, "proxies": int}`` bounding how
      often one label occurs in the batch, for sync-free sequential updates.
    """

    def __init__(self, cfg):
        super().__init__()
        self.temp = cfg.UNSUP.MEMORY.TEMP
        self.momentum = cfg.UNSUP.MEMORY.MOMENTUM

    def reset(self, pseudo: PseudoLabels) -> None:
        raise NotImplementedError

    def forward(self, features: torch.Tensor, batch: Dict) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def update(self, features: torch.Tensor, batch: Dict) -> None:
        raise NotImplementedError

    def epoch_statistics(self) -> Dict[str, float]:
        """Scalars to log at the end of an epoch (e.g. association statistics)."""
        return {}


def build_memory_head(cfg) -> MemoryHead:
    name = cfg.UNSUP.MEMORY.NAME
    head_cls = lookup(MEMORY_HEAD_REGISTRY, name, "UNSUP.MEMORY.NAME")
    return head_cls(cfg)
