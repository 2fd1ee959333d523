"""BatchNorm over groups of G images of the batch, as the authors' DataParallel computes it
(UNSUP.BN_GROUP_SIZE).

The authors train on 4 GPUs under ``nn.DataParallel``: the batch of 256 is scattered into 4
contiguous chunks of 64, every replica normalises its chunk with the chunk's own statistics,
and only the replica on the first device updates the module's running statistics
(``nn.DataParallel``'s docstring: "the replica on ``device[0]`` will have its parameters and
buffers sharing storage with the base parallelized module", BatchNorm2d being its example;
the other replicas' updates are lost with them). So in training:

- images ``[g G, (g + 1) G)`` are normalised with the mean and biased variance of that group;
- ``running_mean`` / ``running_var`` / ``num_batches_tracked`` move with the first group only.

Evaluation is unchanged (running statistics). :func:`convert_group_batchnorm` swaps the
BatchNorm layers of a model for these, keeping the same parameter and buffer tensors, so the
optimiser, ``requires_grad`` flags and state-dict keys are untouched; like
``nn.SyncBatchNorm.convert_sync_batchnorm``, it returns the converted module.
"""
import torch
import torch.nn.functional as F
from torch import nn


class _GroupBatchNorm:
    """Training-mode forward over contiguous groups of ``group_size`` images."""

    group_size: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        if not self.training or self.group_size in (0, batch):
            return super().forward(x)
        if batch % self.group_size:
            raise ValueError(f"UNSUP.BN_GROUP_SIZE {self.group_size}: a batch of {batch} images is not a whole "
                             f"number of groups; the group size must divide the per-process batch "
                             f"SOLVER.IMS_PER_BATCH / world size.")
        # The first group is the DataParallel replica on device 0: nn.BatchNorm's own forward,
        # running-statistics update included. The others use their batch statistics only. A
        # loop over the B / G groups (4 for the authors' set-up), each a contiguous view.
        groups = x.split(self.group_size)
        first = super().forward(groups[0])
        rest = [F.batch_norm(g, None, None, self.weight, self.bias, True, 0.0, self.eps) for g in groups[1:]]
        return torch.cat([first, *rest])

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"


class GroupBatchNorm1d(_GroupBatchNorm, nn.BatchNorm1d):
    pass


class GroupBatchNorm2d(_GroupBatchNorm, nn.BatchNorm2d):
    pass


_GROUPED = {nn.BatchNorm1d: GroupBatchNorm1d, nn.BatchNorm2d: GroupBatchNorm2d}


def convert_group_batchnorm(module: nn.Module, group_size: int) -> nn.Module:
    """``module`` with every BatchNorm1d / BatchNorm2d (and subclasses that keep their
    forward, e.g. fastreid's ``BatchNorm``) replaced by its group version; ``group_size`` 0
    returns ``module`` unchanged. A BatchNorm subclass with its own forward (fastreid's
    ``GhostBatchNorm``) or SyncBatchNorm cannot be grouped and raises ``ValueError``.
    """
    if group_size < 0:
        raise ValueError(f"UNSUP.BN_GROUP_SIZE {group_size}: must be 0 (whole batch) or a positive group size.")
    if group_size == 0:
        return module
    if isinstance(module, _GroupBatchNorm):
        module.group_size = group_size
        return module
    if isinstance(module, nn.SyncBatchNorm):
        raise ValueError(f"UNSUP.BN_GROUP_SIZE {group_size}: {type(module).__name__} already normalises across "
                         f"processes; use BatchNorm (MODEL.BACKBONE.NORM / MODEL.HEADS.NORM 'BN') or "
                         f"UNSUP.BN_GROUP_SIZE 0.")
    for base, grouped in _GROUPED.items():
        if isinstance(module, base):
            if type(module).forward is not base.forward:
                raise ValueError(f"UNSUP.BN_GROUP_SIZE {group_size}: {type(module).__name__} has its own forward, "
                                 f"which cannot be grouped; use BatchNorm or UNSUP.BN_GROUP_SIZE 0.")
            converted = grouped(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, device="meta")
            # The same tensors, not copies: the optimiser and requires_grad flags still apply.
            for name in ("weight", "bias"):
                setattr(converted, name, getattr(module, name))
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                setattr(converted, name, getattr(module, name))
            converted.group_size = group_size
            converted.train(module.training)
            return converted
    for name, child in module.named_children():
        new = convert_group_batchnorm(child, group_size)
        if new is not child:
            setattr(module, name, new)
    return module


def check_group_size(group_size: int, batch: int, world_size: int) -> None:
    """Raise ``ValueError`` unless ``group_size`` (UNSUP.BN_GROUP_SIZE) splits every process's
    batch of ``batch / world_size`` images (SOLVER.IMS_PER_BATCH) into whole groups."""
    local = batch // world_size
    if group_size < 0 or (group_size and local % group_size):
        span = (" A group spanning processes (SyncBatchNorm over a subset of ranks) is not supported."
                if group_size > local else "")
        raise ValueError(f"UNSUP.BN_GROUP_SIZE {group_size}: must be 0 (the whole batch) or divide the "
                         f"{local} images each of the {world_size} processes trains on "
                         f"(SOLVER.IMS_PER_BATCH {batch}).{span}")


@torch.no_grad()
def broadcast_buffers_(module: nn.Module, src: int = 0) -> None:
    """Every process's ``module`` takes process ``src``'s buffers (BatchNorm running
    statistics); a no-op in a single process.

    In training every process's BatchNorm updates its running statistics from its own share of
    the batch, and DDP (``broadcast_buffers=False``) leaves them apart. The model in eval mode
    (epoch-start features, evaluation) must be the same on every process: rank 0 holds the
    statistics of the first images of the global batch, the ones the authors' DataParallel
    keeps (and the single-process run with ``UNSUP.BN_GROUP_SIZE`` = the per-process batch).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src)
