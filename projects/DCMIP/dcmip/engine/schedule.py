"""Learning-rate schedule of the unsupervised methods, as a pure function of the position."""


def lr_factor(cfg, epoch: int, iteration: int) -> float:
    """Multiplier of SOLVER.BASE_LR at ``epoch`` / global ``iteration``.

    - Linear warm-up over the first SOLVER.WARMUP_ITERS iterations, from SOLVER.WARMUP_FACTOR
      to 1 (O2CAP: 10 epochs from 0.01x, METHODS §2).
    - Then ×SOLVER.GAMMA at each epoch of SOLVER.STEPS reached (absolute epochs).
    - DCMIP (UNSUP.MEMORY.NAME DiscrepantProxyMemory) restarts the schedule at stage 2:
      ×GAMMA every UNSUP.DCMIP.STAGE_LR_STEPS epochs counted from the stage's first epoch
      (METHODS §4: "lr ×0.1 every 20 epochs within each stage").
    """
    s = cfg.SOLVER
    warmup = 1.0
    if iteration < s.WARMUP_ITERS:
        alpha = iteration / s.WARMUP_ITERS
        warmup = s.WARMUP_FACTOR * (1 - alpha) + alpha
    if cfg.UNSUP.MEMORY.NAME == "DiscrepantProxyMemory":
        stage1 = cfg.UNSUP.DCMIP.STAGE1_EPOCHS
        stage_epoch = epoch - stage1 if epoch >= stage1 else epoch
        steps = cfg.UNSUP.DCMIP.STAGE_LR_STEPS
        decays = sum(stage_epoch >= m for m in steps)
    else:
        decays = sum(epoch >= m for m in s.STEPS)
    return warmup * s.GAMMA ** decays
