"""Cluster Contrast (Dai et al.; METHODS §3): :mod:`.functional` holds ClusterNCE as a pure
tensor function; :mod:`.head` holds ``ClusterMemory``, the registered memory head."""
from . import functional  # noqa: F401
from .head import ClusterMemory  # noqa: F401  (registration)
