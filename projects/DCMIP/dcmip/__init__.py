"""Unsupervised person re-ID for fast-reid: Cluster Contrast, O2CAP and DCMIP.

Importing the package makes fastreid 1.4.0 work on current Python / torch / numpy (see
:mod:`dcmip.compat`) and registers the plugin's meta-architecture, memory heads, samplers and
datasets into fastreid's registries.
"""
from .compat import apply_fastreid_compat

apply_fastreid_compat()

from .config import add_dcmip_config  # noqa: E402
from . import data, memory, modeling, sampling  # noqa: E402,F401  (registration)

__all__ = ["add_dcmip_config"]
