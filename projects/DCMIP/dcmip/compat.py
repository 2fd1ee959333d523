"""Make fastreid 1.4.0 import and run on Python 3.11, torch 2, numpy 2, with or without a GPU.

fastreid 1.4.0 (the PyPI release) was written for torch 1.13 / Python 3.8 and a CUDA machine.
Rather than editing site-packages, this module patches the few places that break, once, when
``dcmip`` is imported. Each patch is listed here with the failure it fixes:

Import-time (must run before the first ``import fastreid``):
  1. ``torch._six`` was removed in torch 2.0; ``fastreid.data.build`` imports ``string_classes``
     from it. We register a stand-in module.
  2. ``collections.Mapping`` (and friends) moved to ``collections.abc`` in Python 3.10;
     ``fastreid.data.build`` and ``fastreid.evaluation.testing`` import them from
     ``collections``. We alias the abstract base classes back.
  3. ``np.bool`` etc. were removed in numpy 1.24 (``np.bool`` is back in numpy 2; the others
     are not). ``fastreid.evaluation.rank`` uses ``np.bool``. We alias what is missing.
  4. ``fastreid.solver.optim.lamb`` imports ``torch.utils.tensorboard`` (never using it), which
     fails without the ``tensorboard`` package. When it is not installed we register a
     stand-in whose ``SummaryWriter`` raises an ImportError saying to install it.

CPU paths (patched after import, only change behaviour when there is no CUDA device):
  5. ``DataLoaderX`` creates a CUDA stream and calls ``torch.cuda.set_device`` in its
     prefetch thread. Without CUDA we hand out a plain ``DataLoader`` (no pinned memory).
  6. ``launch``'s worker asserts CUDA and always initialises NCCL. Without CUDA (or with
     fewer GPUs than processes) we initialise gloo and skip ``set_device``, so
     ``--num-gpus N`` runs N CPU processes. The rest of the worker is
     :func:`dcmip.engine.launch.run_worker`, shared with torchrun: bad input and stopped
     training (``UserInputError``, ``TrainingStopped``) end a worker with one ``error:`` line
     and exit code ``USER_ERROR_EXIT_CODE`` instead of a traceback (on GPUs too).
  7. ``ReidEvaluator`` compiles its optional Cython ranking module into site-packages on first
     use and calls ``sys.exit(1)`` when that fails (no Cython, read-only install). We skip the
     compilation; ``fastreid.evaluation.rank`` then uses the Cython module if it was built and
     its own Python implementation (same metrics) otherwise.

Everything else fastreid does on the CPU path already works (its CUDA calls are guarded).

Image modes (your own cameras' files): fastreid's ``read_image`` without a format returns
the file's own mode, so an RGBA or grey+alpha PNG gave a 4- or 2-channel tensor (a crash in
the first convolution) and a palette PNG or BMP its palette indices as grey levels (silently
wrong colours). :func:`rgb_read_image` converts every image to RGB (an RGB or grey image reads
exactly as before); ``fastreid.data.data_utils`` and ``fastreid.data.common`` get it.

Log noise (so that a run's log says each fact once):
  8. :data:`HARMLESS_WARNINGS`, each matched by the start of its message (and, where it
     comes from fastreid, by module), are ignored: every DataLoader worker and every process
     printed them again, up to 54 times a run. The list says why each is harmless; any
     other warning still shows.
  9. Log records in :data:`DROPPED_LOG_MESSAGES` are dropped by a filter on their logger:
     ``torch.utils.cpp_extension``'s "No CUDA runtime is found, using CUDA_HOME=..." when
     fastreid's environment table imports it on a machine without CUDA, and fastreid's
     "Evaluation results for <dataset> in csv format:" header, printed just above its own
     "Evaluation results in csv format:" header of the same table.
 10. fastreid 1.4.0's ``__version__`` still says "1.3" (its environment table prints it); it
     is set from the installed distribution's metadata.
"""
import collections
import collections.abc
import importlib.metadata
import importlib.util
import logging
import math
import sys
import types
import warnings

import numpy as np
import torch

_APPLIED = False

# (message start as a regular expression, module regex or "" for any): see patch 8.
HARMLESS_WARNINGS = (
    # fastreid's to_tensor and comm.all_gather build tensors with torch.ByteStorage.from_buffer,
    # deprecated in torch 2 but working.
    (r"TypedStorage is deprecated", r"fastreid\."),
    # fastreid's test loader hard-codes 4 workers; on a machine with fewer cores torch warns at
    # every evaluation. The workers only decode images: too many costs memory, not results.
    (r"This DataLoader will create \d+ worker processes in total", ""),
    # fastreid.evaluation.rank falls back to its Python ranking, which computes the same
    # metrics (patch 7); UNSUP.EVALUATOR "blocked" does not use either.
    (r"Cython rank evaluation \(very fast so highly recommended\) is unavailable", r"fastreid\."),
    # Recent torch (2.15 here) deprecates DistributedDataParallel(broadcast_buffers=False) for an
    # argument older torch lacks; the trainer's False (buffers not synchronised) is intended.
    (r"`broadcast_buffers` is deprecated", ""),
)
# (logger, message start): see patch 9.
DROPPED_LOG_MESSAGES = (
    ("torch.utils.cpp_extension", "No CUDA runtime is found"),
    ("fastreid.engine.defaults", "Evaluation results for "),
)
# A worker that printed an `error:` line exits with it; tools/train_net.py adds no traceback.
USER_ERROR_EXIT_CODE = 3


def _patch_imports():
    if "torch._six" not in sys.modules:
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        six.int_classes = int
        six.inf = math.inf
        sys.modules["torch._six"] = six
        torch._six = six
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
    for name, alias in (("bool", np.bool_), ("int", int), ("float", float), ("object", object)):
        if name not in np.__dict__:
            setattr(np, name, alias)
    if importlib.util.find_spec("tensorboard") is None and "torch.utils.tensorboard" not in sys.modules:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = _MissingSummaryWriter
        sys.modules["torch.utils.tensorboard"] = stub


class _MissingSummaryWriter:
    def __init__(self, *args, **kwargs):
        raise ImportError("TensorBoard logging needs the `tensorboard` package: pip install tensorboard")


def tensorboard_available() -> bool:
    """Whether the real ``tensorboard`` package is installed (not patch 4's stand-in)."""
    return importlib.util.find_spec("tensorboard") is not None


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def filter_harmless_warnings() -> None:
    """Patches 8 and 9: ignore :data:`HARMLESS_WARNINGS`, drop :data:`DROPPED_LOG_MESSAGES`.
    DataLoader workers are forked and inherit the filters; spawned processes import dcmip."""
    for message, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, module=module)
    for name, prefix in DROPPED_LOG_MESSAGES:
        log = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.prefix == prefix for f in log.filters):
            log.addFilter(_DropMessage(prefix))


def rgb_read_image(read_image):
    """fastreid's ``read_image`` converting to RGB when no format is asked for."""
    def read_rgb(file_name, format=None):
        return read_image(file_name, format or "RGB")
    return read_rgb


def data_loader_x(local_rank, **kwargs):
    """fastreid's ``DataLoaderX`` where CUDA exists, a plain ``DataLoader`` otherwise."""
    if torch.cuda.is_available():
        from fastreid.data.data_utils import DataLoaderX
        return DataLoaderX(local_rank, **kwargs)
    kwargs.pop("pin_memory", None)
    return torch.utils.data.DataLoader(**kwargs)


def distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                       dist_url, args):
    """fastreid's ``_distributed_worker`` with a gloo fallback when there are no GPUs for it."""
    import logging

    import torch.distributed as dist

    use_cuda = torch.cuda.is_available() and torch.cuda.device_count() >= num_gpus_per_machine
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method=dist_url,
                                world_size=world_size, rank=global_rank)
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    if use_cuda:
        torch.cuda.set_device(local_rank)
    from .engine.launch import run_worker
    run_worker(main_func, args, num_gpus_per_machine, machine_rank, global_rank)


def apply_fastreid_compat():
    """Apply every patch above; idempotent."""
    global _APPLIED
    if _APPLIED:
        return
    _patch_imports()
    filter_harmless_warnings()

    import fastreid
    import fastreid.data.build  # noqa: F401
    import fastreid.engine.launch  # noqa: F401
    import fastreid.evaluation.reid_evaluation  # noqa: F401

    # Through sys.modules: `fastreid.engine.launch` as an attribute is the launch *function*
    # (fastreid.engine re-exports it), not the module.
    data_build = sys.modules["fastreid.data.build"]
    launch = sys.modules["fastreid.engine.launch"]
    reid_evaluation = sys.modules["fastreid.evaluation.reid_evaluation"]

    data_build.DataLoaderX = data_loader_x
    launch._distributed_worker = distributed_worker
    reid_evaluation.ReidEvaluator._compile_dependencies = lambda self: None
    data_utils = sys.modules["fastreid.data.data_utils"]
    data_utils.read_image = sys.modules["fastreid.data.common"].read_image = rgb_read_image(data_utils.read_image)
    try:
        fastreid.__version__ = importlib.metadata.version("fastreid")
    except importlib.metadata.PackageNotFoundError:
        pass  # a source checkout on sys.path: keep what it says
    _APPLIED = True
