"""The EMA teacher of DCMIP stage 2 (METHODS §4): ``θ_t <- m θ_t + (1 - m) θ`` after every step."""
import torch
from torch import nn


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """In place, ``θ_t <- m θ_t + (1 - m) θ`` over the teacher's state (m = 0.999).

    What is averaged: every entry of the state dict, i.e. the parameters *and* the persistent
    buffers. The teacher only ever runs in eval mode (feature extraction, evaluation), so its
    BatchNorm running statistics are never refreshed by its own forward passes; averaging the
    student's statistics with the same momentum keeps them matched to the averaged weights
    (copying the student's would pair current statistics with weights ~1/(1-m) steps old).
    Integer buffers (BatchNorm's ``num_batches_tracked``) cannot be averaged and are copied.
    Non-persistent buffers are not state: the memory banks are rebuilt every epoch and the
    pixel mean / std are constants, so they are left alone.

    The average is computed as ``θ_t + (1 - m)(θ - θ_t)`` (``lerp``), equal to the formula
    above and exact when ``θ_t == θ``, so identical entries never drift by rounding.

    Args:
        teacher: the EMA model, updated in place; same architecture as ``student``.
        student: the trained model.
        momentum: m, the weight of the teacher's current state.
    """
    teacher_state = teacher.state_dict(keep_vars=True)
    student_state = student.state_dict(keep_vars=True)
    if teacher_state.keys() != student_state.keys():
        missing = sorted(set(teacher_state) ^ set(student_state))
        raise ValueError(f"teacher and student differ in their state entries: {missing[:5]}")
    averaged, averaged_from, copied, copied_from = [], [], [], []
    for name, t in teacher_state.items():
        s = student_state[name]
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
