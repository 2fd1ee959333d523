"""fastreid's Checkpointer with atomic writes and a clear error for a checkpoint that does not
belong to the model being built (issue 7, bad input)."""
import os
from typing import Dict, List, Optional

import torch

from fastreid.utils.checkpoint import Checkpointer

from ..memory.composite import method_name
from ..registry import UserInputError

# What each memory head trains; a checkpoint names its method by the head.
METHODS = {"ClusterMemory": "Cluster Contrast", "CameraAwareProxyMemory": "O2CAP",
           "DiscrepantProxyMemory": "DCMIP"}


class CheckpointMismatchError(UserInputError):
    """A checkpoint written by another method or architecture than the config builds."""


def checkpoint_metadata(cfg) -> Dict[str, str]:
    """What a checkpoint records about the run that wrote it (``dcmip`` entry of the file)."""
    # A composite is named with its members: resuming with other members is another method.
    return {"method": method_name(cfg),
            "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
            "backbone": f"{cfg.MODEL.BACKBONE.NAME} (depth {cfg.MODEL.BACKBONE.DEPTH})",
            "pooling": cfg.MODEL.HEADS.POOL_LAYER}


def describe(meta: Optional[Dict[str, str]]) -> str:
    if not meta:
        return "an unknown method and architecture (the file has no dcmip metadata)"
    method = METHODS.get(meta.get("method"), meta.get("method"))
    return (f"{method} ({meta.get('method')}) with {meta.get('meta_architecture')}, "
            f"{meta.get('backbone')}, {meta.get('pooling')}")


def _strip_module(keys) -> Dict[str, object]:
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in keys.items()}


def check_checkpoint(path: str, checkpoint, model_state: Dict[str, torch.Tensor],
                     metadata: Optional[Dict[str, str]], resume: bool) -> None:
    """Raise a :class:`UserInputError` unless ``checkpoint`` loads exactly into ``model_state``.

    fastreid loads checkpoints non-strictly: a mismatched key is skipped with a warning and the
    run goes on with random or ImageNet weights in its place. Here every key and shape must
    match. ``resume`` (``--resume``) also requires the same method, since the optimiser state,
    the stage and the schedule of another method's run mean nothing to this one.
    """
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise UserInputError(
            f"{path} is not a checkpoint written by tools/train_net.py (no 'model' entry). "
            f"ImageNet weights for the backbone go to MODEL.BACKBONE.PRETRAIN_PATH; MODEL.WEIGHTS "
            f"and --resume take OUTPUT_DIR/model_*.pth.")
    written_by = checkpoint.get("dcmip")
    wrote = f"{path} was written by {describe(written_by)}; this config builds {describe(metadata)}"
    fix = ("Pass the config the checkpoint was trained with (its OUTPUT_DIR/config.yaml), or "
           + ("start this run in a fresh OUTPUT_DIR." if resume else "a checkpoint of this method."))
    if resume and written_by and metadata and written_by != metadata:
        fields = ", ".join(k for k in metadata if written_by.get(k) != metadata[k])
        raise CheckpointMismatchError(f"--resume: {wrote} (they differ in {fields}). {fix}")
    ckpt = _strip_module(checkpoint["model"])
    model = _strip_module(model_state)
    missing = sorted(set(model) - set(ckpt))
    unexpected = sorted(set(ckpt) - set(model))
    shapes = [f"{k} {tuple(ckpt[k].shape)} vs {tuple(model[k].shape)}" for k in sorted(set(ckpt) & set(model))
              if tuple(getattr(ckpt[k], "shape", ())) != tuple(model[k].shape)]
    if missing or unexpected or shapes:
        def first(items: List[str]) -> str:
            return ", ".join(items[:5]) + (" ..." if len(items) > 5 else "")
        parts = [f"{len(missing)} weights missing ({first(missing)})" if missing else "",
                 f"{len(unexpected)} unexpected ({first(unexpected)})" if unexpected else "",
                 f"{len(shapes)} of another shape ({first(shapes)})" if shapes else ""]
        raise CheckpointMismatchError(f"{wrote}: {'; '.join(p for p in parts if p)}. {fix}")


class AtomicCheckpointer(Checkpointer):
    """Writes ``<name>.pth`` and the ``last_checkpoint`` tag through a temporary file and a
    rename, so a run killed while saving leaves the previous checkpoint intact; records
    ``metadata`` (:func:`checkpoint_metadata`) in every file and checks it on load."""

    def __init__(self, model, save_dir: str = "", *, metadata: Optional[Dict[str, str]] = None,
                 save_to_disk: bool = True, **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.metadata = metadata
        # Set by load() for _load_model, which fastreid calls with the checkpoint alone.
        self._path, self._resuming = "", False

    def save(self, name: str, model_state=None, **kwargs):
        """Like fastreid's; ``model_state`` replaces the model's own weights in the file (DCMIP
        keeps the better of student and teacher as ``model_best``)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict() if model_state is None else model_state}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.metadata:
            data["dcmip"] = self.metadata
        data.update(kwargs)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {save_file}")
        _atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(f"{name}.pth")

    def load(self, path: str, checkpointables: Optional[List[str]] = None):
        """fastreid's load; ``checkpointables`` None (everything: ``--resume``) or a list
        (``[]``: weights only, MODEL.WEIGHTS)."""
        self._resuming = checkpointables is None or len(checkpointables) > 0
        self._path = path
        if path and not os.path.isfile(path):
            raise UserInputError(f"checkpoint {path}: no such file.")
        return super().load(path, checkpointables)

    def tag_last_checkpoint(self, last_filename_basename: str):
        _atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode()))

    def _load_file(self, f: str):
        # Our checkpoints hold numpy/python RNG states next to tensors; they are the user's own
        # files, as with fastreid on torch 1.x, which loaded them the same way.
        try:
            return torch.load(f, map_location=torch.device("cpu"), weights_only=False)
        except Exception as e:
            raise UserInputError(f"checkpoint {f} cannot be read ({type(e).__name__}: {e}); "
                                 f"it may be truncated or not a torch file.") from None

    def _load_model(self, checkpoint):
        check_checkpoint(self._path, checkpoint, self.model.state_dict(), self.metadata, resume=self._resuming)
        return super()._load_model(checkpoint)


def _atomic_write(path: str, write) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
