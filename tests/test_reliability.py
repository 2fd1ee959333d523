"""Atomic checkpoints, rank slices of the sampler, and the no-GPU message (issue 7)."""
import argparse
import os

import numpy as np
import pytest
import torch

import dcmip  # noqa: F401
from dcmip.engine.checkpoint import AtomicCheckpointer
from dcmip.registry import UserInputError
from dcmip.sampling import SAMPLER_REGISTRY
from dcmip.structures import PseudoLabels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_last", epoch=1)
    before = (tmp_path / "model_last.pth").read_bytes()

    def killed_mid_write(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(torch, "save", killed_mid_write)
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_last", epoch=2)
    assert (tmp_path / "model_last.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_last.pth"
    monkeypatch.undo()
    assert torch.load(tmp_path / "model_last.pth", weights_only=False)["epoch"] == 1


def pseudo(n=60, clusters=6, cams=3, seed=0):
    rng = np.random.default_rng(seed)
    c = torch.as_tensor(rng.integers(0, clusters, n))
    cam = torch.as_tensor(rng.integers(0, cams, n))
    _, proxies = torch.unique(c * cams + cam, return_inverse=True)
    return PseudoLabels(features=torch.zeros(n, 4), clusters=c, cams=cam, proxies=proxies,
                        indices=torch.arange(n))


@pytest.mark.parametrize("name", ["ClusterBalancedSampler", "ProxyBalancedSampler", "CameraDiverseSampler"])
def test_rank_slices_concatenate_to_the_single_process_batches(name):
    """METHODS §5: every rank draws the same global batch and keeps its contiguous slice."""
    p, batch, k = pseudo(), 16, 4
    single = SAMPLER_REGISTRY.get(name)(p, batch, k, seed=3)
    ranks = [iter(SAMPLER_REGISTRY.get(name)(p, batch, k, seed=3, rank=r, world_size=2)) for r in range(2)]
    stream = iter(single)
    for _ in range(5):
        expected = [next(stream) for _ in range(batch)]
        got = [next(ranks[0]) for _ in range(batch // 2)] + [next(ranks[1]) for _ in range(batch // 2)]
        assert got == expected


def test_a_gpu_config_without_a_gpu_says_what_to_do():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    from dcmip.engine.defaults import load_cfg

    args = argparse.Namespace(config_file=os.path.join(ROOT, "configs", "O2CAP", "market.yml"),
                              opts=["MODEL.BACKBONE.PRETRAIN", "False"], eval_only=False)
    with pytest.raises(UserInputError, match="no GPU is visible.*MODEL.DEVICE cpu"):
        load_cfg(args)
