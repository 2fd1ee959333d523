"""ImageNet weights as fastreid users get them (dcmip.weights): an empty
MODEL.BACKBONE.PRETRAIN_PATH resolves to fastreid's file in its cache, downloaded with torch.hub's
checksum rule when missing; offline, one clear error. No test touches the network: urlopen is
replaced by a stub serving bytes or failing like an offline machine."""
import argparse
import hashlib
import io
import os
import urllib.error

import pytest
import torch

import dcmip  # noqa: F401
import dcmip.weights as weights
from dcmip.registry import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "DCMIP", "demo_cpu.yml")
RESNET18 = "https://download.pytorch.org/models/resnet18-5c106cde.pth"


def resnet_opts(*extra):
    return ["MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.BACKBONE.DEPTH", "18x",
            "MODEL.BACKBONE.FEAT_DIM", "512", "MODEL.BACKBONE.PRETRAIN_PATH", "", *extra]


def load(opts):
    from dcmip.engine.defaults import load_cfg

    return load_cfg(argparse.Namespace(config_file=CONFIG, opts=opts, eval_only=False))


def serve(payload=None, error=None):
    """A stand-in for urllib.request.urlopen: serves ``payload`` or raises ``error``."""
    calls = []

    def urlopen(url, timeout=None):
        calls.append((url, timeout))
        if error is not None:
            raise error
        return io.BytesIO(payload)

    urlopen.calls = calls
    return urlopen


def no_network(monkeypatch):
    stub = serve(error=urllib.error.URLError("[Errno -3] Temporary failure in name resolution"))
    monkeypatch.setattr(weights.urllib.request, "urlopen", stub)
    return stub


def tiny_state_bytes():
    buffer = io.BytesIO()
    torch.manual_seed(0)
    torch.save({"conv1.weight": torch.randn(64, 3, 7, 7)}, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("name,depth,ibn,se,expected", [
    ("build_resnet_backbone", "50x", False, False, "resnet50-19c8e357.pth"),
    ("build_resnet_backbone", "50x", True, False, "resnet50_ibn_a-d9d0bb7b.pth"),
    ("build_resnet_backbone", "101x", True, True, "se_resnet101_ibn_a-fabed4e2.pth"),
    ("build_resnet_backbone", "50x", False, True, None),  # fastreid has no se_50x file
    ("build_mobilenetv2_backbone", "1.0x", False, False, None),
])
def test_the_url_is_fastreids(name, depth, ibn, se, expected):
    cfg = load(["MODEL.BACKBONE.PRETRAIN", "False"])
    b = cfg.MODEL.BACKBONE
    b.NAME, b.DEPTH, b.WITH_IBN, b.WITH_SE = name, depth, ibn, se
    url = weights.fastreid_imagenet_url(b)
    assert (url and os.path.basename(url)) == expected


def test_cache_dir_follows_torch_home_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "th"))
    assert weights.torch_cache_dir() == str(tmp_path / "th" / "checkpoints")
    monkeypatch.delenv("TORCH_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert weights.torch_cache_dir() == str(tmp_path / "xdg" / "torch" / "checkpoints")


def test_download_checks_the_hash_prefix_of_the_file_name(monkeypatch, tmp_path):
    payload = tiny_state_bytes()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    stub = serve(payload)
    monkeypatch.setattr(weights.urllib.request, "urlopen", stub)
    url = f"https://example.invalid/models/resnet18-{prefix}.pth"
    path = weights.fetch_imagenet_weights(url, cache_dir=str(tmp_path))
    assert path == str(tmp_path / f"resnet18-{prefix}.pth") and stub.calls == [(url, weights.DOWNLOAD_TIMEOUT_S)]
    assert torch.equal(torch.load(path)["conv1.weight"], torch.load(io.BytesIO(payload))["conv1.weight"])
    weights.fetch_imagenet_weights(url, cache_dir=str(tmp_path))  # cached: no second download
    assert len(stub.calls) == 1

    bad = "https://example.invalid/models/resnet18-00000000.pth"
    with pytest.raises(UserInputError, match="does not start with the 00000000"):
        weights.fetch_imagenet_weights(bad, cache_dir=str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [f"resnet18-{prefix}.pth"]  # nothing kept, no .part


def test_offline_is_one_error_naming_the_url_the_cache_and_the_key(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    stub = no_network(monkeypatch)
    with pytest.raises(UserInputError) as error:
        load(resnet_opts())
    message = str(error.value)
    cached = os.path.join(str(tmp_path), "checkpoints", "resnet18-5c106cde.pth")
    assert RESNET18 in message and cached in message and "MODEL.BACKBONE.PRETRAIN_PATH" in message
    assert "name resolution" in message and stub.calls == [(RESNET18, weights.DOWNLOAD_TIMEOUT_S)]
    assert not os.listdir(os.path.join(str(tmp_path), "checkpoints"))


def test_a_cached_file_is_used_without_network_and_loads_into_the_backbone(monkeypatch, tmp_path):
    """fastreid's cache layout: $TORCH_HOME/checkpoints/<file name of the URL>; the config then
    names the file and fastreid's ResNet builder loads it."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    os.makedirs(tmp_path / "checkpoints")
    cached = tmp_path / "checkpoints" / "resnet18-5c106cde.pth"
    cached.write_bytes(tiny_state_bytes())
    stub = no_network(monkeypatch)
    cfg = load(resnet_opts())
    assert cfg.MODEL.BACKBONE.PRETRAIN_PATH == str(cached) and stub.calls == []

    from fastreid.modeling.backbones import build_backbone

    backbone = build_backbone(cfg)
    assert torch.equal(backbone.conv1.weight, torch.load(cached)["conv1.weight"])


def test_a_named_missing_file_is_not_downloaded_and_the_hint_says_how(monkeypatch, tmp_path):
    stub = no_network(monkeypatch)
    with pytest.raises(UserInputError, match=r"no such file.*set it to '' to download fastreid's .*resnet18"):
        load(resnet_opts("MODEL.BACKBONE.PRETRAIN_PATH", str(tmp_path / "missing.pth")))
    assert stub.calls == []
