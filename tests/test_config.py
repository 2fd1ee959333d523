"""add_dcmip_config and every shipped config file."""
import argparse
import glob
import os

import pytest

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from fastreid.config import get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def new_cfg():
    cfg = get_cfg()
    add_dcmip_config(cfg)
    return cfg


def test_defaults_follow_the_spec():
    u = new_cfg().UNSUP
    assert (u.CLUSTER.K1, u.CLUSTER.K2, u.CLUSTER.MIN_SAMPLES) == (20, 6, 4)
    assert (u.MEMORY.NAME, u.MEMORY.TEMP, u.MEMORY.MOMENTUM) == ("ClusterMemory", 0.05, 0.1)
    assert (u.O2CAP.HARD_NEGATIVES, u.O2CAP.BALANCE_WEIGHT, u.O2CAP.ONLINE_NEGATIVES) == (50, 0.15, "instance")
    assert (u.REA.MODE, tuple(u.REA.AREA), u.REA.MIN_ASPECT, tuple(u.REA.FILL)) == (
        "authors", (0.02, 0.4), 0.3, (0.485, 0.456, 0.406))


def test_every_key_has_a_comment():
    """Each UNSUP key (or a group of consecutive keys) is introduced by a comment."""
    src = [l.strip() for l in open(os.path.join(ROOT, "projects", "DCMIP", "dcmip", "config.py"))]
    for i, line in enumerate(src):
        if line.startswith("_C.UNSUP.") and "CN()" not in line:
            j = i - 1
            while src[j].startswith("_C.UNSUP.") and "CN()" not in src[j]:
                j -= 1
            assert src[j].startswith("#"), f"no comment above: {line}"


CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.yml"), recursive=True)
                 if not os.path.basename(p).startswith("Base-"))
# Memory head -> (temperature, momentum, samplers it is trained with) in the papers and the authors' code.
METHOD = {
    "ClusterMemory": (0.05, 0.1, {"RandomMultipleGallerySampler"}),
    "DiscrepantProxyMemory": (0.05, 0.1, {"RandomMultipleGallerySampler"}),
    "CameraAwareProxyMemory": (0.07, 0.2, {"ProxyBalancedSampler", "ClusterBalancedSampler"}),
}


def load(path):
    from dcmip.engine.defaults import load_cfg

    return load_cfg(argparse.Namespace(config_file=os.path.join(ROOT, path), eval_only=False,
                                       opts=["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False"]))


@pytest.mark.parametrize("path", CONFIGS)
def test_config_values_are_consistent(path):
    """Every shipped config, through the real loader: its method's temperature, momentum and
    sampler, whole P x K batches, LR steps inside the run, an evaluation that DCMIP's stage 2
    can start from, and the erasing / clustering settings of the authors."""
    from dcmip.memory import uses_dcmip

    cfg = load(path)
    u = cfg.UNSUP
    if u.MEMORY.NAME == "CompositeMemory":
        # Every member with its own method's tau and momentum; the sampler of one of them.
        members = list(u.MEMORY.MEMBERS)
        assert list(zip(u.MEMORY.MEMBER_TEMPS, u.MEMORY.MEMBER_MOMENTA)) == [METHOD[m][:2] for m in members]
        samplers = set.union(*(METHOD[m][2] for m in members))
    else:
        temp, momentum, samplers = METHOD[u.MEMORY.NAME]
        assert (u.MEMORY.TEMP, u.MEMORY.MOMENTUM) == (temp, momentum)
    assert u.SAMPLER.NAME in samplers
    assert cfg.SOLVER.IMS_PER_BATCH % u.SAMPLER.NUM_INSTANCES == 0
    assert (u.CLUSTER.MIN_SAMPLES, u.CLUSTER.K2) == (4, 6) and 0 < u.CLUSTER.EPS < 1
    assert (u.REA.MODE, cfg.INPUT.REA.ENABLED, cfg.INPUT.REA.PROB) == ("authors", True, 0.5)
    assert list(cfg.SOLVER.STEPS) == sorted(cfg.SOLVER.STEPS) and max(cfg.SOLVER.STEPS) < cfg.SOLVER.MAX_EPOCH
    if uses_dcmip(cfg):
        assert 0 < u.DCMIP.STAGE1_EPOCHS <= cfg.SOLVER.MAX_EPOCH
        assert u.DCMIP.STAGE1_EPOCHS % cfg.TEST.EVAL_PERIOD == 0, "stage 2 starts from the best evaluated stage-1 model"
    if path.endswith("_cpu.yml") or "/market_split/" in path:  # sized for 2 CPU cores
        assert cfg.MODEL.DEVICE == "cpu" and not cfg.SOLVER.AMP.ENABLED
        assert cfg.MODEL.BACKBONE.NAME == "build_mobilenetv2_backbone" and list(cfg.INPUT.SIZE_TRAIN) == [128, 64]
    else:
        assert cfg.MODEL.BACKBONE.DEPTH == "50x" and cfg.MODEL.BACKBONE.LAST_STRIDE == 1
        assert cfg.TEST.EVAL_PERIOD == 10


def test_every_config_writes_to_its_own_folder():
    folders = {}
    for path in CONFIGS:
        cfg = new_cfg()
        cfg.merge_from_file(os.path.join(ROOT, path))
        folders.setdefault(cfg.OUTPUT_DIR, []).append(path)
    assert {k: v for k, v in folders.items() if len(v) > 1} == {}


def test_unknown_key_is_named():
    cfg = new_cfg()
    with pytest.raises((KeyError, AssertionError), match="UNSUP.CLUSTER.EPSILON"):
        cfg.merge_from_list(["UNSUP.CLUSTER.EPSILON", "0.5"])


def test_unknown_memory_head_lists_the_choices():
    from dcmip.memory import build_memory_head

    cfg = new_cfg()
    cfg.UNSUP.MEMORY.NAME = "NoSuchMemory"
    with pytest.raises(KeyError, match="NoSuchMemory.*ClusterMemory"):
        build_memory_head(cfg)
