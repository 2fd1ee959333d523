"""Learning-rate schedule of the unsupervised methods, as a pure function of the position."""
from ..memory.composite import uses_dcmip

WARMUP_STEPS = ("epoch", "iter")


def lr_factor(cfg, epoch: int, iteration: int) -> float:
    """Multiplier of SOLVER.BASE_LR at ``epoch`` / global ``iteration``.

    - Linear warm-up over the first SOLVER.WARMUP_ITERS iterations, from SOLVER.WARMUP_FACTOR
      to 1 (O2CAP: 10 epochs from 0.01x, METHODS §2). UNSUP.WARMUP_STEP "iter" moves it every
      iteration (fastreid); "epoch" holds each epoch at the value of its first iteration, which
      is the authors' ``WarmupMultiStepLR`` stepped once per epoch (O2CAP ``train.py``:
      ``warmup_iters=10`` epochs, ``warmup_factor=0.01``): 0.01 + 0.099 e at epoch e < 10.
    - Then ×SOLVER.GAMMA at each epoch of SOLVER.STEPS reached (absolute epochs).
    - DCMIP (DiscrepantProxyMemory, alone or a CompositeMemory member) restarts the schedule at stage 2:
      ×GAMMA every UNSUP.DCMIP.STAGE_LR_STEPS epochs counted from the stage's first epoch
      (METHODS §4: "lr ×0.1 every 20 epochs within each stage").
    """
    s = cfg.SOLVER
    step = cfg.UNSUP.WARMUP_STEP
    if step not in WARMUP_STEPS:
        raise ValueError(f"UNSUP.WARMUP_STEP={step!r}: choose one of {WARMUP_STEPS}")
    position = epoch * cfg.UNSUP.ITERS if step == "epoch" else iteration
    warmup = 1.0
    if position < s.WARMUP_ITERS:
        alpha = position / s.WARMUP_ITERS
        warmup = s.WARMUP_FACTOR * (1 - alpha) + alpha
    if uses_dcmip(cfg):
        stage1 = cfg.UNSUP.DCMIP.STAGE1_EPOCHS
        stage_epoch = epoch - stage1 if epoch >= stage1 else epoch
        steps = cfg.UNSUP.DCMIP.STAGE_LR_STEPS
        decays = sum(stage_epoch >= m for m in steps)
    else:
        decays = sum(epoch >= m for m in s.STEPS)
    return warmup * s.GAMMA ** decays
