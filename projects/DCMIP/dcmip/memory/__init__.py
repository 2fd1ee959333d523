"""Proxy memories (the loss heads), one package per method: ``<method>/functional.py`` holds
the method's losses and memory updates as pure tensor functions, ``<method>/head.py`` the
registered head that keeps the state. ``updates`` holds the momentum updates they share;
``composite`` trains several heads together (``CompositeMemory``)."""
from .base import MEMORY_HEAD_REGISTRY, MemoryHead, build_memory_head
from . import cluster_contrast, dcmip, o2cap  # noqa: F401  (registration)
from .composite import CompositeMemory, memory_names, uses_dcmip  # noqa: F401  (registration)
