"""Resume (issue 5: across DCMIP's stage boundary; issue 7: same metrics as an uninterrupted run)."""
import os
import re

from test_train_e2e import ROOT, run, workspace  # noqa: F401  (shared fixture)

DCMIP = os.path.join(ROOT, "configs", "DCMIP", "demo_cpu.yml")


def dcmip_args(root, weights, out, max_epoch):
    return ["--config-file", DCMIP, "MODEL.BACKBONE.PRETRAIN_PATH", weights, "OUTPUT_DIR", str(out),
            "SOLVER.MAX_EPOCH", str(max_epoch), "UNSUP.DCMIP.STAGE1_EPOCHS", "1", "UNSUP.ITERS", "2",
            "SOLVER.IMS_PER_BATCH", "16", "UNSUP.SAMPLER.NUM_INSTANCES", "4", "TEST.EVAL_PERIOD", "1",
            "DATALOADER.NUM_WORKERS", "0"]


def result_rows(log):
    return re.findall(r"^.*\| DemoMarket \|.*$", log, flags=re.M)


def test_dcmip_stage_switch_and_resume_match_an_uninterrupted_run(workspace):  # noqa: F811
    root, weights = workspace
    full = run(dcmip_args(root, weights, root / "full", 3), root)
    log = full.stdout + full.stderr
    assert "DCMIP stage 1" in log and "DCMIP stage 2 begins" in log and "teacher mAP" in log
    assert (root / "full" / "model_stage1_best.pth").is_file()

    run(dcmip_args(root, weights, root / "split", 2), root)
    resumed = run(["--resume", *dcmip_args(root, weights, root / "split", 3)], root)
    log_resumed = resumed.stdout + resumed.stderr
    assert "Starting training from epoch 2" in log_resumed
    # The last evaluation (student or teacher, whichever is better) is identical.
    assert result_rows(log)[-1] == result_rows(log_resumed)[-1]
