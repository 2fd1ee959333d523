"""DCMIP (Zou et al., ICCV 2023; METHODS §4): :mod:`.functional` holds L_cc, L_ins and the
proxy / instance-memory updates as pure tensor functions; :mod:`.head` holds
``DiscrepantProxyMemory``, the registered memory head around them."""
from . import functional  # noqa: F401
from .head import DiscrepantProxyMemory  # noqa: F401  (registration)
