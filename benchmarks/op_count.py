"""Count the ATen operators a function dispatches (each one a kernel launch on a GPU)."""
from collections import Counter

from torch.utils._python_dispatch import TorchDispatchMode


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_aten_ops(fn, *args) -> Counter:
    """Operator name -> number of calls while ``fn(*args)`` runs, its backward included;
    views and in-place operators count like the others."""
    with _Counter() as counter:
        fn(*args)
    return counter.ops
