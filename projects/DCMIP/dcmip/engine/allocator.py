"""The C allocator of CPU processes: keep freed memory for the next step instead of returning it.

glibc returns every block above its mmap threshold (at most 32 MiB, adapted at run time) to
the operating system when it is freed, and trims the heap top above 128 KiB. A CNN forward on
the CPU allocates and frees activations of tens of MiB per layer (MobileNetV2 at 128x64,
batch 128: 34-100 MiB each), so every layer paid fresh page faults: half of the epoch-start
extraction's time was kernel time. With both thresholds at 1 GiB the freed blocks are reused:
the extraction runs ~2.5x and a training step ~1.15x faster (docs/benchmarks/extraction.md),
the results are bit-identical (only where the bytes live changes), and the process keeps its
peak heap instead of shrinking after each layer.
"""
import ctypes
import ctypes.util
import logging
import platform

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB in this process (and the loader
    workers it forks later). False, changing nothing, where the C library is not glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, THRESHOLD)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, THRESHOLD))
    except (OSError, AttributeError):
        return False


def apply_allocator_config(cfg) -> None:
    """UNSUP.CPU_KEEP_FREED_MEMORY: set once per process, before the model allocates."""
    if not cfg.UNSUP.CPU_KEEP_FREED_MEMORY:
        return
    if keep_freed_memory():
        logger.info("allocator: freed CPU memory is kept for reuse (glibc mmap / trim thresholds 1 GiB, "
                    "UNSUP.CPU_KEEP_FREED_MEMORY)")
    else:
        logger.info("allocator: not glibc, UNSUP.CPU_KEEP_FREED_MEMORY has no effect")
