"""lr_factor: warm-up, absolute-epoch steps, and DCMIP's per-stage restart."""
import pytest

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from dcmip.engine.schedule import lr_factor
from fastreid.config import get_cfg


def cfg_with(**solver):
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.SOLVER.GAMMA = 0.1
    for k, v in solver.items():
        setattr(cfg.SOLVER, k, v)
    return cfg


def test_o2cap_schedule():
    """10 warm-up epochs of 400 iterations from 0.01x, x0.1 at epochs 20 and 40 (METHODS §2)."""
    cfg = cfg_with(WARMUP_ITERS=4000, WARMUP_FACTOR=0.01, STEPS=[20, 40])
    assert lr_factor(cfg, 0, 0) == pytest.approx(0.01)
    assert lr_factor(cfg, 5, 2000) == pytest.approx(0.01 * 0.5 + 0.5)
    assert lr_factor(cfg, 10, 4000) == pytest.approx(1.0)
    assert lr_factor(cfg, 19, 7999) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 8000) == pytest.approx(0.1)
    assert lr_factor(cfg, 40, 16000) == pytest.approx(0.01)


def test_dcmip_restarts_the_schedule_in_stage_2():
    cfg = cfg_with(WARMUP_ITERS=0, STEPS=[999])
    cfg.UNSUP.MEMORY.NAME = "DiscrepantProxyMemory"
    cfg.UNSUP.DCMIP.STAGE1_EPOCHS = 40
    cfg.UNSUP.DCMIP.STAGE_LR_STEPS = [20, 40]
    factors = [lr_factor(cfg, e, e * 100) for e in (0, 19, 20, 39, 40, 59, 60, 80, 89)]
    assert factors == pytest.approx([1, 1, 0.1, 0.1, 1, 1, 0.1, 0.01, 0.01])
