"""lr_factor: warm-up, absolute-epoch steps, and DCMIP's per-stage restart."""
import bisect

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


def authors_warmup_multistep(epoch: int) -> float:
    """O2CAP train.py's WarmupMultiStepLR(milestones=[20, 40], gamma=0.1, warmup_factor=0.01,
    warmup_iters=10) after ``epoch`` calls of step(), written out from its get_lr."""
    warmup = 1.0
    if epoch < 10:
        alpha = epoch / 10
        warmup = 0.01 * (1 - alpha) + alpha
    return warmup * 0.1 ** bisect.bisect_right([20, 40], epoch)


def test_o2cap_epoch_warmup_equals_the_authors_scheduler_at_every_iteration():
    """The default staircase: every iteration of epoch e has the authors' factor of epoch e
    (0.01, 0.109, ..., 0.901, then 1), for all 50 epochs of 400 iterations."""
    cfg = cfg_with(WARMUP_ITERS=4000, WARMUP_FACTOR=0.01, STEPS=[20, 40])
    cfg.UNSUP.ITERS = 400
    assert cfg.UNSUP.WARMUP_STEP == "epoch"
    for epoch in range(50):
        expected = authors_warmup_multistep(epoch)
        for iteration in (epoch * 400, epoch * 400 + 1, epoch * 400 + 399):
            assert lr_factor(cfg, epoch, iteration) == pytest.approx(expected, rel=1e-12)
    assert [round(lr_factor(cfg, e, e * 400), 3) for e in range(11)] == [
        0.01, 0.109, 0.208, 0.307, 0.406, 0.505, 0.604, 0.703, 0.802, 0.901, 1.0]


def test_epoch_warmup_is_a_pure_function_of_the_position():
    """A resumed run calls lr_factor with the absolute epoch and iteration, nothing else: the
    same position gives the same factor whatever came before (no scheduler state)."""
    cfg = cfg_with(WARMUP_ITERS=300, WARMUP_FACTOR=0.01, STEPS=[5])
    cfg.UNSUP.ITERS = 100
    forward = [lr_factor(cfg, i // 100, i) for i in range(700)]
    backward = [lr_factor(cfg, i // 100, i) for i in reversed(range(700))][::-1]
    assert forward == backward
    assert len(set(forward[:300])) == 3 and forward[300:500] == [1.0] * 200 and forward[500] == pytest.approx(0.1)


def test_warmup_step_rejects_unknown_value():
    cfg = cfg_with(WARMUP_ITERS=10)
    cfg.UNSUP.WARMUP_STEP = "batch"
    with pytest.raises(ValueError, match="UNSUP.WARMUP_STEP"):
        lr_factor(cfg, 0, 0)


def test_o2cap_iteration_warmup():
    """UNSUP.WARMUP_STEP iter: fastreid's linear per-iteration warm-up, 10 epochs of 400
    iterations from 0.01x, x0.1 at epochs 20 and 40."""
    cfg = cfg_with(WARMUP_ITERS=4000, WARMUP_FACTOR=0.01, STEPS=[20, 40])
    cfg.UNSUP.WARMUP_STEP = "iter"
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
