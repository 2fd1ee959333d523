"""Several memory heads trained together: ``UNSUP.MEMORY.NAME: CompositeMemory``.

Each member is a registered head (``UNSUP.MEMORY.MEMBERS``), built as if it were the only one,
with its own temperature and momentum (``MEMBER_TEMPS`` / ``MEMBER_MOMENTA``; empty = the
shared ``TEMP`` / ``MOMENTUM``) and every other key shared. All members are reset from the same
pseudo labels (DCMIP's multi-instance proxies still read ``PseudoLabels.teacher_features``),
see the same batch, and keep and update their own memories by their own rules. The objective
is ``sum_i WEIGHTS[i] * (sum of member i's losses)``; the losses keep their members' names
(``loss_cc``, ``loss_ins``, ``loss_offline``, ...) so the log shows each, already weighted.

A composite of one member is that head: the same losses, gradients and memories, bit for bit
(``tests/test_composite.py``). The sampler is chosen once (``UNSUP.SAMPLER.NAME``) and must
suit every member's ``BATCH_GROUPS`` (:func:`check_memory_config`).
"""
from typing import Dict, List, NamedTuple, Tuple

import torch
from torch import nn

from ..registry import UserInputError, lookup
from ..structures import PseudoLabels
from .base import MEMORY_HEAD_REGISTRY, MemoryHead, check_batch_groups

COMPOSITE = "CompositeMemory"
DCMIP_HEAD = "DiscrepantProxyMemory"


class Member(NamedTuple):
    """One member's registered head name and its own weight, tau and momentum."""
    name: str
    weight: float
    temp: float
    momentum: float


def memory_names(cfg) -> Tuple[str, ...]:
    """The registered heads a config trains: its members for a composite, else the head."""
    memory = cfg.UNSUP.MEMORY
    return tuple(memory.MEMBERS) if memory.NAME == COMPOSITE else (memory.NAME,)


def method_name(cfg) -> str:
    """The head a checkpoint records, with a composite's members: "CompositeMemory(A+B)"."""
    memory = cfg.UNSUP.MEMORY
    return f"{COMPOSITE}({'+'.join(memory.MEMBERS)})" if memory.NAME == COMPOSITE else memory.NAME


def uses_dcmip(cfg) -> bool:
    """Whether DCMIP's head is trained, alone or in a composite: the run then has DCMIP's two
    stages (EMA teacher, stage-relative learning-rate steps) when STAGE1_EPOCHS < MAX_EPOCH."""
    return DCMIP_HEAD in memory_names(cfg)


def members(cfg) -> List[Member]:
    """The checked member settings of a composite config (:class:`UserInputError` otherwise)."""
    memory = cfg.UNSUP.MEMORY
    names = tuple(memory.MEMBERS)
    if not names:
        raise UserInputError(f"UNSUP.MEMORY.NAME {COMPOSITE} needs UNSUP.MEMORY.MEMBERS, e.g. "
                             f"'(\"DiscrepantProxyMemory\", \"CameraAwareProxyMemory\")'.")
    for name in names:
        lookup(MEMORY_HEAD_REGISTRY, name, "UNSUP.MEMORY.MEMBERS")
    if COMPOSITE in names:
        raise UserInputError(f"UNSUP.MEMORY.MEMBERS {names}: a {COMPOSITE} cannot be a member; list its "
                             f"members directly.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserInputError(f"UNSUP.MEMORY.MEMBERS {names}: {', '.join(repeated)} listed twice; each head "
                             f"at most once (its losses would carry the same names).")

    def per_member(key: str, values, shared, valid, requirement: str) -> Tuple[float, ...]:
        values = tuple(values) or (shared,) * len(names)
        if len(values) != len(names):
            raise UserInputError(f"UNSUP.MEMORY.{key} {values}: give one value per member of "
                                 f"UNSUP.MEMORY.MEMBERS {names}, or none.")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not valid(v) for v in values):
            raise UserInputError(f"UNSUP.MEMORY.{key} {values}: every value must be a number {requirement}.")
        return tuple(float(v) for v in values)

    weights = per_member("WEIGHTS", memory.WEIGHTS, 1.0, lambda v: v >= 0, ">= 0")
    temps = per_member("MEMBER_TEMPS", memory.MEMBER_TEMPS, memory.TEMP, lambda v: v > 0, "> 0")
    momenta = per_member("MEMBER_MOMENTA", memory.MEMBER_MOMENTA, memory.MOMENTUM, lambda v: 0 <= v <= 1,
                         "in [0, 1]")
    return [Member(*m) for m in zip(names, weights, temps, momenta)]


def check_memory_config(cfg, sampler_groups: Dict[str, object]) -> None:
    """Refuse, with a :class:`UserInputError`, composite keys that are wrong or unused and a
    sampler that does not suit every head (``BATCH_GROUPS``). ``sampler_groups``: every
    registered sampler's name -> its ``GROUPS``."""
    memory = cfg.UNSUP.MEMORY
    if memory.NAME == COMPOSITE:
        members(cfg)
    else:
        unused = [k for k in ("MEMBERS", "WEIGHTS", "MEMBER_TEMPS", "MEMBER_MOMENTA") if tuple(memory[k])]
        if unused:
            raise UserInputError(f"UNSUP.MEMORY.{', '.join(unused)} only apply to UNSUP.MEMORY.NAME {COMPOSITE}, "
                                 f"but the head is {memory.NAME}; set NAME {COMPOSITE} or leave them empty.")
    requirements = {name: MEMORY_HEAD_REGISTRY.get(name).BATCH_GROUPS for name in memory_names(cfg)}
    try:
        check_batch_groups(requirements, cfg.UNSUP.SAMPLER.NAME, sampler_groups)
    except ValueError as e:
        raise UserInputError(str(e)) from None


def member_cfg(cfg, member: Member):
    """``cfg`` as the member alone would see it: its name, temperature and momentum."""
    out = cfg.clone()
    out.defrost()
    out.UNSUP.MEMORY.NAME = member.name
    out.UNSUP.MEMORY.TEMP = member.temp
    out.UNSUP.MEMORY.MOMENTUM = member.momentum
    out.UNSUP.MEMORY.MEMBERS = out.UNSUP.MEMORY.WEIGHTS = ()
    out.UNSUP.MEMORY.MEMBER_TEMPS = out.UNSUP.MEMORY.MEMBER_MOMENTA = ()
    out.freeze()
    return out


@MEMORY_HEAD_REGISTRY.register()
class CompositeMemory(MemoryHead):
    """The members of ``UNSUP.MEMORY.MEMBERS``, their weighted losses summed.

    Config: ``UNSUP.MEMORY.MEMBERS`` (registered head names, each at most once),
    ``UNSUP.MEMORY.WEIGHTS`` (loss weight per member; empty = 1 each),
    ``UNSUP.MEMORY.MEMBER_TEMPS`` / ``MEMBER_MOMENTA`` (per member; empty = ``TEMP`` /
    ``MOMENTUM``), and every member's own keys (``UNSUP.DCMIP``, ``UNSUP.O2CAP``, ``UPDATE``).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        self.settings = members(cfg)
        # Members' memories are non-persistent buffers, rebuilt every epoch: the module list
        # adds no checkpoint keys, and model.to() moves them with the model.
        self.heads = nn.ModuleList(MEMORY_HEAD_REGISTRY.get(m.name)(member_cfg(cfg, m)) for m in self.settings)

    @torch.no_grad()
    def reset(self, pseudo: PseudoLabels) -> None:
        for head in self.heads:
            head.reset(pseudo)

    def forward(self, features: torch.Tensor, batch: Dict) -> Dict[str, torch.Tensor]:
        losses, owner = {}, {}
        for member, head in zip(self.settings, self.heads):
            for name, value in head(features, batch).items():
                if name in losses:
                    raise RuntimeError(f"{COMPOSITE}: {owner[name]} and {member.name} both return {name}; "
                                       f"loss names must be distinct.")
                losses[name], owner[name] = member.weight * value, member.name
        return losses

    @torch.no_grad()
    def update(self, features: torch.Tensor, batch: Dict) -> None:
        for head in self.heads:
            head.update(features, batch)

    def epoch_statistics(self) -> Dict[str, float]:
        """Every member's statistics; a name two members report is prefixed by the later one."""
        merged = {}
        for member, head in zip(self.settings, self.heads):
            for name, value in head.epoch_statistics().items():
                merged[name if name not in merged else f"{member.name}/{name}"] = value
        return merged
