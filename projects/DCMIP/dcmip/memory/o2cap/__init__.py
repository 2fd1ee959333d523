"""O2CAP (Wang et al., TIP 2022; METHODS §2): :mod:`.functional` holds the losses and the
online association as pure tensor functions (L_off Eq. 4, L_on Eq. 5-6, L_merge Eq. 8,
L_intra Eq. 9, the baselines Eq. 2-3); :mod:`.head` holds ``CameraAwareProxyMemory``, the
registered memory head around them."""
from . import functional  # noqa: F401
from .head import CameraAwareProxyMemory  # noqa: F401  (registration)
