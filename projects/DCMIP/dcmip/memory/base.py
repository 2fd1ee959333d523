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
from typing import Dict, Optional, Tuple

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

    ``BATCH_GROUPS``: the batch groupings (a sampler's ``GROUPS``: "clusters" or "proxies")
    under which the head's losses and updates mean what the method says; ``None`` = any.
    :func:`check_batch_groups` refuses a sampler outside it before training starts.
    """
    BATCH_GROUPS: Optional[Tuple[str, ...]] = None

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


def check_batch_groups(requirements: Dict[str, Optional[Tuple[str, ...]]], sampler: str,
                       sampler_groups: Dict[str, Optional[str]]) -> None:
    """Raise ``ValueError`` unless every head's ``BATCH_GROUPS`` admits the sampler's grouping.

    Args:
        requirements: head name -> its ``BATCH_GROUPS`` (every member of a composite).
        sampler: UNSUP.SAMPLER.NAME.
        sampler_groups: every registered sampler's name -> its ``GROUPS`` (None: declares none).
    """
    constrained = {name: tuple(groups) for name, groups in requirements.items() if groups is not None}
    names = list(constrained)
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            if not set(constrained[first]) & set(constrained[second]):
                raise ValueError(
                    f"UNSUP.MEMORY: {first} needs batches grouped by {' or '.join(constrained[first])} "
                    f"and {second} by {' or '.join(constrained[second])}; no sampler serves both. "
                    f"Drop one of them from UNSUP.MEMORY.MEMBERS.")
    drawn = sampler_groups.get(sampler)
    for name, groups in constrained.items():
        if drawn not in groups:
            fits = sorted(s for s, g in sampler_groups.items() if g in groups)
            raise ValueError(
                f"UNSUP.MEMORY: {name} needs batches grouped by {' or '.join(groups)}, but UNSUP.SAMPLER.NAME "
                f"{sampler} " + (f"groups them by {drawn}" if drawn else "declares no GROUPS")
                + f". Choose one of: {', '.join(fits) or '(no registered sampler)'}.")
