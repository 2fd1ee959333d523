"""Train-image transforms: fastreid's, with the authors' random erasing (``UNSUP.REA``).

The three authors' codes (cluster-contrast re-ID, O2CAP, DCMIP) build
``Resize, Flip, Pad 10 + RandomCrop, ToTensor, Normalize, RandomErasing(0.5, mean=ImageNet)``.
Their ``RandomErasing`` (Zhong et al., AAAI 2020) differs from torchvision's, which fastreid
uses: the area fraction is ``U(0.02, 0.4)`` (not 0.02-0.33), the aspect ratio ``U(0.3, 1/0.3)``
(not log-uniform over 0.3-3.3), and, because it runs after ``Normalize``, it writes
``(0.485, 0.456, 0.406)`` into the *normalised* tensor. Our images stay in [0, 255] until the
model normalises them (``(x - PIXEL_MEAN) / PIXEL_STD``), so :class:`AuthorsRandomErasing`
writes ``FILL * PIXEL_STD + PIXEL_MEAN``, which the model turns into exactly the authors' value.
"""
import math
from typing import Sequence

import torch
import torchvision.transforms as T

from fastreid.data.transforms import ToTensor, build_transforms

from ..registry import UserInputError

__all__ = ["AuthorsRandomErasing", "build_train_transforms", "REA_MODES"]

REA_MODES = ("authors", "fastreid")


class AuthorsRandomErasing:
    """The authors' ``RandomErasing`` on a (C, H, W) float tensor, in place.

    With probability ``prob``: up to 100 attempts, each drawing a target area
    ``U(sl, sh) * H * W`` and an aspect ratio ``U(r1, 1 / r1)``, giving
    ``h = round(sqrt(area * aspect))``, ``w = round(sqrt(area / aspect))`` (Python's rounding);
    the first attempt with ``h < H`` and ``w < W`` erases rows ``x1 .. x1 + h`` and columns
    ``y1 .. y1 + w`` with ``x1 ~ U{0 .. H - h}``, ``y1 ~ U{0 .. W - w}`` to ``value`` (one per
    channel). Randomness comes from torch's generator (seeded per DataLoader worker, like
    torchvision's transforms), so runs are reproducible under ``UNSUP.SEED``.
    """

    def __init__(self, prob: float, value: Sequence[float], sl: float = 0.02, sh: float = 0.4,
                 r1: float = 0.3, attempts: int = 100):
        if not 0 <= prob <= 1:
            raise UserInputError(f"INPUT.REA.PROB = {prob!r} must be in [0, 1].")
        if not 0 < sl <= sh < 1:
            raise UserInputError(f"UNSUP.REA.AREA = ({sl}, {sh}) must satisfy 0 < low <= high < 1.")
        if not 0 < r1 <= 1:
            raise UserInputError(f"UNSUP.REA.MIN_ASPECT = {r1!r} must be in (0, 1].")
        self.prob, self.sl, self.sh, self.r1, self.attempts = prob, sl, sh, r1, attempts
        self.value = torch.as_tensor(value, dtype=torch.float32).view(-1, 1, 1)

    @staticmethod
    def _uniform(low: float, high: float, generator=None) -> float:
        return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()

    def region(self, height: int, width: int, generator=None):
        """``(x1, y1, h, w)`` of the erased region, or None (not erased this time)."""
        if self._uniform(0, 1, generator) >= self.prob:
            return None
        for _ in range(self.attempts):
            target = self._uniform(self.sl, self.sh, generator) * height * width
            aspect = self._uniform(self.r1, 1 / self.r1, generator)
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < width and h < height:
                x1 = int(torch.randint(0, height - h + 1, (), generator=generator))
                y1 = int(torch.randint(0, width - w + 1, (), generator=generator))
                return x1, y1, h, w
        return None

    def __call__(self, img: torch.Tensor, generator=None) -> torch.Tensor:
        box = self.region(img.shape[1], img.shape[2], generator)
        if box is not None:
            x1, y1, h, w = box
            img[:, x1:x1 + h, y1:y1 + w] = self.value.to(img.dtype)[:img.shape[0]]
        return img

    def __repr__(self):
        return (f"{type(self).__name__}(prob={self.prob}, area=({self.sl}, {self.sh}), "
                f"aspect=({self.r1}, {1 / self.r1:.4g}), value={self.value.view(-1).tolist()})")


def build_train_transforms(cfg) -> T.Compose:
    """fastreid's train transforms, with the random erasing of ``UNSUP.REA.MODE``."""
    mode = cfg.UNSUP.REA.MODE
    if mode not in REA_MODES:
        raise UserInputError(f"UNSUP.REA.MODE = {mode!r}: expected one of {', '.join(REA_MODES)}.")
    if mode == "fastreid" or not cfg.INPUT.REA.ENABLED:
        return build_transforms(cfg, is_train=True)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.REA.ENABLED = False
    transforms = build_transforms(cfg, is_train=True).transforms
    mean = torch.tensor(cfg.MODEL.PIXEL_MEAN, dtype=torch.float32)
    std = torch.tensor(cfg.MODEL.PIXEL_STD, dtype=torch.float32)
    fill = torch.tensor(cfg.UNSUP.REA.FILL, dtype=torch.float32) * std + mean
    low, high = cfg.UNSUP.REA.AREA
    erasing = AuthorsRandomErasing(cfg.INPUT.REA.PROB, fill.tolist(), low, high, cfg.UNSUP.REA.MIN_ASPECT)
    # Right after ToTensor, where fastreid puts its own erasing.
    at = next(i for i, t in enumerate(transforms) if isinstance(t, ToTensor)) + 1
    return T.Compose(transforms[:at] + [erasing] + transforms[at:])
