from .base import SAMPLER_REGISTRY, PseudoLabelSampler, build_sampler
from . import balanced  # noqa: F401  (registration)
from . import multi_gallery  # noqa: F401  (registration)
