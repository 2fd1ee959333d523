"""add_dcmip_config and every shipped config file."""
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


def test_every_key_has_a_comment():
    """Each UNSUP key (or a group of consecutive keys) is introduced by a comment."""
    src = [l.strip() for l in open(os.path.join(ROOT, "projects", "DCMIP", "dcmip", "config.py"))]
    for i, line in enumerate(src):
        if line.startswith("_C.UNSUP.") and "CN()" not in line:
            j = i - 1
            while src[j].startswith("_C.UNSUP.") and "CN()" not in src[j]:
                j -= 1
            assert src[j].startswith("#"), f"no comment above: {line}"


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yml"), recursive=True)))
def test_config_file_merges(path):
    cfg = new_cfg()
    cfg.merge_from_file(path)
    assert cfg.UNSUP.MEMORY.NAME


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
