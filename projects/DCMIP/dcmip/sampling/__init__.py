from .base import SAMPLER_REGISTRY, PseudoLabelSampler, build_sampler
from . import balanced  # noqa: F401  (registration)
from . import camera_diverse  # noqa: F401  (registration)
