"""ONNX export of the embedding network (:class:`dcmip.engine.inference.EmbeddingNetwork`) and
its check against PyTorch with ONNX Runtime; behind ``tools/export_onnx.py``.

The exported graph takes what fastreid's test transform produces, so a deployment only has to
resize: input ``images`` (batch, 3, H, W) float32, RGB, values in [0, 255], H x W =
INPUT.SIZE_TEST; the pixel mean / std normalisation is inside the graph. Output ``features``
(batch, d), L2-normalised, so cosine similarity is a dot product. The batch axis is dynamic.
"""
import importlib
from typing import List

import numpy as np
import torch
from torch import nn

from .registry import UserInputError

__all__ = ["MissingExtraError", "require", "export_onnx", "onnxruntime_session", "run_onnx",
           "max_abs_difference", "input_description", "INPUT_NAME", "OUTPUT_NAME"]

INPUT_NAME, OUTPUT_NAME = "images", "features"
OPSET = 17


class MissingExtraError(UserInputError, ImportError):
    """An optional package a tool needs is not installed."""


def require(module: str, extra: str):
    """Import ``module``, or say which extra of this package installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(f"this needs the {module} package: pip install -e '.[{extra}]' "
                                f"(or pip install {module})") from None


def export_onnx(network: nn.Module, height: int, width: int, path: str) -> None:
    """Trace ``network`` (on the CPU, in eval mode) to ``path`` with a dynamic batch axis and
    check the file with onnx's checker."""
    onnx = require("onnx", "deploy")
    network = network.cpu().eval()
    example = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        # The TorchScript exporter: the dynamo one needs onnxscript, an extra dependency.
        torch.onnx.export(network, (example,), path, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          opset_version=OPSET, dynamo=False)
    onnx.checker.check_model(path)


def onnxruntime_session(path: str, threads: int = 0, spinning: bool = True):
    """A CPU ONNX Runtime session for ``path`` (``threads`` 0 = ONNX Runtime's default).
    ``spinning`` False: its worker threads sleep between runs instead of busy-waiting, which
    would take the cores from whatever runs next (a fair benchmark against PyTorch)."""
    ort = require("onnxruntime", "deploy")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray) -> np.ndarray:
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, dtype=np.float32)})[0]


def input_description(cfg, dim: int) -> List[str]:
    """What the exported model expects and returns (``dim``: the feature dimension), for people
    wiring it up."""
    h, w = cfg.INPUT.SIZE_TEST
    mean = ", ".join(f"{v:g}" for v in cfg.MODEL.PIXEL_MEAN)
    std = ", ".join(f"{v:g}" for v in cfg.MODEL.PIXEL_STD)
    return [f"input  '{INPUT_NAME}': float32 (batch, 3, {h}, {w}) = (N, C, H, W), channels RGB, values in "
            f"[0, 255] (not divided by 255); resize each crop to {h}x{w} (bicubic, as training did)",
            f"         normalisation is inside the model: (x - [{mean}]) / [{std}] per channel",
            f"output '{OUTPUT_NAME}': float32 (batch, {dim}), L2-normalised; cosine similarity = dot product"]


def max_abs_difference(network: nn.Module, session, images: torch.Tensor) -> float:
    """Largest absolute difference between PyTorch's and ONNX Runtime's features of ``images``,
    run as one batch and one image at a time (which exercises the dynamic batch axis)."""
    with torch.no_grad():
        expected = network.cpu().eval()(images).numpy()
    batched = run_onnx(session, images.numpy())
    single = np.concatenate([run_onnx(session, images[i:i + 1].numpy()) for i in range(len(images))])
    return float(max(np.abs(batched - expected).max(), np.abs(single - expected).max()))
