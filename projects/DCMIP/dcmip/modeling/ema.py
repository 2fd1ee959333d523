"""The EMA teacher of DCMIP stage 2 (METHODS §4): ``θ_t <- m θ_t + (1 - m) θ`` after every step.

UNSUP.DCMIP.TEACHER_BN says where the teacher's BatchNorm running statistics come from:

- ``"forward"`` (the authors' ``ClusterContrastTrainer_PCLMP``, DCMIP ``clustercontrast/trainers.py``):
  the teacher runs in training mode on every batch, under ``no_grad`` and with its output
  unused, so its statistics follow its own activations (:func:`teacher_forward_`); only the
  parameters are averaged (``_update_ema_variables`` zips ``parameters()``), buffers stay
  the teacher's own, ``num_batches_tracked`` included.
- ``"ema"``: no extra forward; the student's persistent buffers are averaged like the
  parameters (the integer ``num_batches_tracked`` is copied).
"""
import torch
from torch import nn

TEACHER_BN = ("forward", "ema")


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float, buffers: bool = True) -> None:
    """In place, ``θ_t <- m θ_t + (1 - m) θ`` over the teacher's parameters, and over its
    persistent buffers when ``buffers`` (TEACHER_BN "ema").

    With ``buffers``, float buffers (BatchNorm running statistics) are averaged with the same
    momentum, which keeps them matched to the averaged weights (copying the student's would
    pair current statistics with weights ~1/(1-m) steps old); integer buffers
    (``num_batches_tracked``) cannot be averaged and are copied. Non-persistent buffers are
    never touched: the memory banks are rebuilt every epoch and the pixel mean / std are
    constants.

    The average is computed as ``θ_t + (1 - m)(θ - θ_t)`` (``lerp``), equal to the formula
    above and exact when ``θ_t == θ``, so identical entries never drift by rounding.

    Args:
        teacher: the EMA model, updated in place; same architecture as ``student``.
        student: the trained model.
        momentum: m, the weight of the teacher's current state.
        buffers: also average / copy the persistent buffers.
    """
    teacher_state = teacher.state_dict(keep_vars=True)
    parameters = {name for name, _ in teacher.named_parameters()}
    names = [name for name in teacher_state if buffers or name in parameters]
    student_state = student.state_dict(keep_vars=True)
    if teacher_state.keys() != student_state.keys():
        missing = sorted(set(teacher_state) ^ set(student_state))
        raise ValueError(f"teacher and student differ in their state entries: {missing[:5]}")
    averaged, averaged_from, copied, copied_from = [], [], [], []
    for name in names:
        t, s = teacher_state[name], student_state[name]
        if t.is_floating_point():
            averaged.append(t)
            averaged_from.append(s)
        else:
            copied.append(t)
            copied_from.append(s)
    if averaged:
        torch._foreach_lerp_(averaged, averaged_from, 1.0 - momentum)
    if copied:
        torch._foreach_copy_(copied, copied_from)


@torch.no_grad()
def teacher_forward_(teacher: nn.Module, images: torch.Tensor) -> None:
    """TEACHER_BN "forward": the teacher's backbone and neck run in training mode on the
    student's normalised input ``images``, output discarded, which moves the running
    statistics of its BatchNorm layers (grouped as the student's, UNSUP.BN_GROUP_SIZE).
    The teacher is left in eval mode, the mode it is used in."""
    teacher.train()
    try:
        teacher.heads(teacher.backbone(images))
    finally:
        teacher.eval()
