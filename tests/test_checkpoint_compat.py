"""A checkpoint from another method or architecture stops with a message naming both (issue 7).

fastreid's Checkpointer skips mismatched weights with a warning, so an eval-only run on the
wrong checkpoint used to report the metrics of a half-random model."""
import argparse
import os

import pytest
import torch

import dcmip  # noqa: F401
from dcmip.engine.checkpoint import AtomicCheckpointer, CheckpointMismatchError, checkpoint_metadata
from dcmip.engine.defaults import load_cfg
from dcmip.engine.trainer import UnsupervisedTrainer
from dcmip.registry import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = {"method": "ClusterMemory", "meta_architecture": "UnsupervisedReID", "backbone": "b (depth 1.0x)",
        "pooling": "GlobalAvgPool"}


def saved(tmp_path, model, metadata=META, **extra):
    AtomicCheckpointer(model, str(tmp_path), metadata=metadata).save("model_last", **extra)
    return str(tmp_path / "model_last.pth")


def test_same_model_loads_every_weight(tmp_path):
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    path = saved(tmp_path, src)
    AtomicCheckpointer(dst, metadata=META).load(path, checkpointables=[])
    assert torch.equal(src.weight, dst.weight) and torch.equal(src.bias, dst.bias)


def test_another_shape_names_the_weight_and_both_shapes(tmp_path):
    path = saved(tmp_path, torch.nn.Linear(3, 2))
    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer(torch.nn.Linear(4, 2), metadata=META).load(path, checkpointables=[])
    msg = str(e.value)
    assert "1 of another shape (weight (2, 3) vs (2, 4))" in msg
    assert "written by Cluster Contrast (ClusterMemory)" in msg and "config.yaml" in msg


def test_missing_and_unexpected_weights_are_listed(tmp_path):
    path = saved(tmp_path, torch.nn.Sequential(torch.nn.Linear(3, 2)))
    other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2))
    with pytest.raises(CheckpointMismatchError, match=r"2 weights missing \(1.bias, 1.weight\)"):
        AtomicCheckpointer(other).load(path, checkpointables=[])
    with pytest.raises(CheckpointMismatchError, match=r"2 unexpected \(1.bias, 1.weight\)"):
        AtomicCheckpointer(torch.nn.Sequential(torch.nn.Linear(3, 2))).load(
            saved(tmp_path, other), checkpointables=[])


def test_resume_needs_the_same_method_but_weights_only_loading_does_not(tmp_path):
    src = torch.nn.Linear(3, 2)
    path = saved(tmp_path, src, epoch=3)
    o2cap = dict(META, method="CameraAwareProxyMemory")
    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer(torch.nn.Linear(3, 2), metadata=o2cap).load(path)
    msg = str(e.value)
    assert msg.startswith("--resume:") and "differ in method" in msg and "fresh OUTPUT_DIR" in msg
    assert "this config builds O2CAP (CameraAwareProxyMemory)" in msg
    dst = torch.nn.Linear(3, 2)
    AtomicCheckpointer(dst, metadata=o2cap).load(path, checkpointables=[])
    assert torch.equal(src.weight, dst.weight)


def test_a_checkpoint_without_metadata_is_checked_by_its_weights(tmp_path):
    path = saved(tmp_path, torch.nn.Linear(3, 2), metadata=None)
    assert "dcmip" not in torch.load(path, weights_only=False)
    AtomicCheckpointer(torch.nn.Linear(3, 2), metadata=META).load(path)
    with pytest.raises(CheckpointMismatchError, match="written by an unknown method and architecture"):
        AtomicCheckpointer(torch.nn.Linear(2, 2), metadata=META).load(path)


def test_not_a_training_checkpoint(tmp_path):
    raw = tmp_path / "resnet50.pth"
    torch.save(torch.nn.Linear(3, 2).state_dict(), raw)
    with pytest.raises(UserInputError, match="no 'model' entry.*MODEL.BACKBONE.PRETRAIN_PATH"):
        AtomicCheckpointer(torch.nn.Linear(3, 2)).load(str(raw), checkpointables=[])
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(saved(tmp_path, torch.nn.Linear(3, 2)), "rb").read()[:100])
    with pytest.raises(UserInputError, match="cannot be read.*truncated"):
        AtomicCheckpointer(torch.nn.Linear(3, 2)).load(str(cut), checkpointables=[])
    with pytest.raises(UserInputError, match="no such file"):
        AtomicCheckpointer(torch.nn.Linear(3, 2)).load(str(tmp_path / "absent.pth"))


def build(config):
    cfg = load_cfg(argparse.Namespace(config_file=os.path.join(ROOT, "configs", config),
                                      opts=["MODEL.BACKBONE.PRETRAIN", "False"], eval_only=False))
    return cfg, UnsupervisedTrainer.build_model(cfg)


def test_dcmip_checkpoint_into_an_o2cap_model_names_the_gem_parameter(tmp_path):
    """DCMIP pools with GeM (a learnt exponent), O2CAP with average pooling."""
    dcmip_cfg, dcmip_model = build("DCMIP/demo_cpu.yml")
    o2cap_cfg, o2cap_model = build("O2CAP/demo_cpu.yml")
    path = saved(tmp_path, dcmip_model, metadata=checkpoint_metadata(dcmip_cfg))
    with pytest.raises(CheckpointMismatchError) as e:
        AtomicCheckpointer(o2cap_model, metadata=checkpoint_metadata(o2cap_cfg)).load(path, checkpointables=[])
    msg = str(e.value)
    assert "written by DCMIP (DiscrepantProxyMemory)" in msg and "builds O2CAP (CameraAwareProxyMemory)" in msg
    assert "unexpected (heads.pool_layer.p)" in msg
    # and the same model loads into its own config
    AtomicCheckpointer(build("DCMIP/demo_cpu.yml")[1], metadata=checkpoint_metadata(dcmip_cfg)).load(
        path, checkpointables=[])
