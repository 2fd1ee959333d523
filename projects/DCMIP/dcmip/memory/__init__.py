from .base import MEMORY_HEAD_REGISTRY, MemoryHead, build_memory_head
from . import cluster_memory  # noqa: F401  (registration)
from . import camera_aware  # noqa: F401  (registration)
from . import discrepant  # noqa: F401  (registration)
