"""A trained model outside training: loading it, the features of any images, and the network
alone (no memory head) for export. Shared by ``--eval-only`` and the tools
(``extract_features.py``, ``visualize_ranks.py``, ``export_onnx.py``)."""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from fastreid.data.data_utils import read_image
from fastreid.data.transforms import build_transforms

from ..data.camera_folders import camera_index
from ..registry import UserInputError
from .checkpoint import AtomicCheckpointer, checkpoint_metadata
from .features import extract_features
from .trainer import UnsupervisedTrainer

logger = logging.getLogger(__name__)

FEATURE_KEYS = ("features", "paths", "cams", "camera_names")


def load_model(cfg) -> nn.Module:
    """The model ``cfg`` builds, in eval mode on MODEL.DEVICE, with MODEL.WEIGHTS loaded and
    checked against the config (:class:`AtomicCheckpointer`); without MODEL.WEIGHTS, the
    initial (ImageNet) weights."""
    if cfg.MODEL.WEIGHTS:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.BACKBONE.PRETRAIN = False  # every weight comes from the checkpoint
    model = UnsupervisedTrainer.build_model(cfg)
    if cfg.MODEL.WEIGHTS:
        AtomicCheckpointer(model, metadata=checkpoint_metadata(cfg)).load(cfg.MODEL.WEIGHTS, checkpointables=[])
    else:
        # Said here, once per process, rather than by the config check that runs twice.
        logger.warning("no MODEL.WEIGHTS: using the initial (ImageNet) weights.")
    return model.eval()


class EmbeddingNetwork(nn.Module):
    """What a deployed model computes: (B, 3, H, W) RGB float images in [0, 255] (fastreid's
    test transform: resize to INPUT.SIZE_TEST, no scaling) -> pixel mean / std normalisation
    -> backbone -> pooling -> BN neck -> (B, d) L2-normalised embeddings. The memory head is
    training-only and is never called, so tracing leaves it out."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


def image_features(cfg, model: nn.Module, paths: Sequence[str], cams: Optional[Sequence[int]] = None
                   ) -> np.ndarray:
    """(N, d) float32 L2-normalised features of the images at ``paths``, in order, batched by
    TEST.IMS_PER_BATCH with fastreid's test transform; progress is logged."""
    cams = list(cams) if cams is not None else [-1] * len(paths)
    items = [(path, -1, cam) for path, cam in zip(paths, cams)]
    return extract_features(cfg, model, items, desc="features").cpu().numpy().astype(np.float32)


def load_test_images(cfg, paths: Sequence[str]) -> torch.Tensor:
    """(N, 3, H, W) float images in [0, 255] as the model sees them: fastreid's test transform
    (resize to INPUT.SIZE_TEST, bicubic; no scaling)."""
    transform = build_transforms(cfg, is_train=False)
    return torch.stack([transform(read_image(path)) for path in paths])


def save_features(path: str, features: np.ndarray, paths: Sequence[str], cams: Sequence[int],
                  camera_names: Sequence[str]) -> None:
    """An ``.npz`` with ``features`` (N, d) float32, ``paths`` (N,), ``cams`` (N,) int (-1 where
    unknown) and ``camera_names`` (C,) (camera id i is ``camera_names[i]``)."""
    np.savez(path, features=np.asarray(features, np.float32), paths=np.asarray(list(paths), dtype=str),
             cams=np.asarray(list(cams), np.int64), camera_names=np.asarray(list(camera_names), dtype=str))


def load_features(path: str) -> Dict[str, np.ndarray]:
    """The arrays :func:`save_features` wrote, checked for shape."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in FEATURE_KEYS}
    except (OSError, ValueError, KeyError) as e:
        raise UserInputError(f"{path}: not a feature file of tools/extract_features.py ({e}).") from None
    n = len(arrays["features"])
    if arrays["features"].ndim != 2 or len(arrays["paths"]) != n or len(arrays["cams"]) != n:
        raise UserInputError(f"{path}: features, paths and cams differ in length; extract them again.")
    return arrays


def entries_to_arrays(entries: List[Tuple[str, Optional[str]]]) -> Tuple[List[str], List[int], List[str]]:
    """(paths, camera ids with -1 where unknown, camera names by id) of ``list_images`` entries;
    ids are given by sorted name."""
    index = camera_index(entries)
    return ([p for p, _ in entries], [index[c] if c is not None else -1 for _, c in entries], list(index))
