"""Training without a test set (DATASETS.TESTS empty), as on your own unlabelled cameras: the
run trains to the end, writes model_last / model_final and no model_best, draws its
montages and curves, resumes, and says so once; --eval-only stops with one line; DCMIP's
stage 2 starts from stage 1's last model. Also the log a person reads: each fact once."""
import argparse
import os

import pytest
import torch

import dcmip  # noqa: F401
from fastreid.engine.train_loop import HookBase
from test_train_e2e import run, tiny, workspace  # noqa: F401  (the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_TESTS = ("DATASETS.TESTS", "()")
NO_TEST_SET_LINE = "no test set (DATASETS.TESTS is empty): no evaluation, no model_best"


@pytest.fixture(scope="module")
def trained(workspace):  # noqa: F811
    root, weights = workspace
    out = run(tiny(root, weights, *NO_TESTS, "OUTPUT_DIR", str(root / "no_tests")), root)
    return root, weights, out.stdout + out.stderr


def test_trains_to_the_end_without_evaluating(trained):
    root, _, log = trained
    out = root / "no_tests"
    assert (out / "model_final.pth").is_file() and (out / "model_last.pth").is_file()
    assert not (out / "model_best.pth").exists()
    assert log.count(NO_TEST_SET_LINE) == 1
    assert "Evaluation results" not in log and "mAP" not in (out / "metrics.json").read_text()
    assert "epoch 1 clustering: clusters" in log and "clusters_multi_camera" in log
    for name in ("epoch_000.png", "epoch_001.png"):
        assert (out / "montages" / name).is_file(), name
    pytest.importorskip("matplotlib")
    assert (out / "curves.png").is_file()


def test_log_says_each_fact_once(trained):
    _, _, log = trained
    for noise in ("TypedStorage is deprecated", "No CUDA runtime is found", "Using a generated random seed",
                  "worker processes in total", "Cython rank evaluation", "fastreid             1.3 "):
        assert noise not in log, noise
    assert log.count("seed 0 (UNSUP.SEED)") == 1
    assert log.count("environment:") == 1 and log.count("saved to") == 1
    # fastreid printed the epoch's last metrics line twice (after the step and after the epoch).
    lines = [line.split("]: ", 1)[-1] for line in log.splitlines() if "epoch/iter:" in line]
    assert len(lines) == len(set(lines)) > 0


def test_resume_without_a_test_set(trained):
    root, weights, _ = trained
    out = run(["--resume"] + tiny(root, weights, *NO_TESTS, "OUTPUT_DIR", str(root / "no_tests"),
                                  "SOLVER.MAX_EPOCH", "3"), root)
    log = out.stdout + out.stderr
    assert "Starting training from epoch 2" in log and log.count(NO_TEST_SET_LINE) == 1
    assert torch.load(root / "no_tests" / "model_final.pth", map_location="cpu", weights_only=False)["epoch"] == 2
    assert (root / "no_tests" / "montages" / "epoch_002.png").is_file()
    assert not (root / "no_tests" / "model_best.pth").exists()


def test_eval_only_without_a_test_set_is_one_error_line(workspace):  # noqa: F811
    root, weights = workspace
    proc = run(["--config-file", os.path.join(ROOT, "configs", "ClusterContrast", "demo_cpu.yml"), "--eval-only",
                "MODEL.BACKBONE.PRETRAIN_PATH", weights, "OUTPUT_DIR", str(root / "eval_none"), *NO_TESTS],
               root, check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: --eval-only: DATASETS.TESTS is empty, so there is nothing to evaluate on. Name a labelled test "
        "set (e.g. DATASETS.TESTS '(\"DemoMarket\",)'), or embed your own images with tools/extract_features.py."]


def test_eval_only_without_weights_says_so_once(workspace):  # noqa: F811
    root, weights = workspace
    proc = run(["--config-file", os.path.join(ROOT, "configs", "ClusterContrast", "demo_cpu.yml"), "--eval-only",
                "MODEL.BACKBONE.PRETRAIN_PATH", weights, "OUTPUT_DIR", str(root / "eval_initial"),
                "DATALOADER.NUM_WORKERS", "0"], root)
    assert (proc.stdout + proc.stderr).count("no MODEL.WEIGHTS: using the initial (ImageNet) weights") == 1


class StageStart(HookBase):
    """The student after stage 1's last epoch, and student and teacher when stage 2 begins."""

    def __init__(self):
        self.after_stage1 = self.stage2_start = None

    def before_epoch(self):
        t = self.trainer
        if t.epoch == 1:
            self.stage2_start = ({k: v.clone() for k, v in t.unwrapped_model.state_dict().items()},
                                 {k: v.clone() for k, v in t.teacher.state_dict().items()})

    def after_epoch(self):
        if self.trainer.epoch == 0:
            self.after_stage1 = {k: v.clone() for k, v in self.trainer.unwrapped_model.state_dict().items()}


def test_dcmip_stage2_starts_from_stage1_last_without_a_test_set(tmp_path, monkeypatch):
    import fastreid.data.build as data_build

    from dcmip.data.demo import generate_demo_dataset
    from dcmip.engine.defaults import build_trainer, load_cfg
    from dcmip.weights import prepare_mobilenetv2_weights

    generate_demo_dataset(tmp_path / "datasets" / "demo-market", seed=0, num_train_ids=16, num_test_ids=4)
    weights = prepare_mobilenetv2_weights(str(tmp_path / "mobilenetv2.pth"))
    monkeypatch.setattr(data_build, "_root", str(tmp_path / "datasets"))
    args = argparse.Namespace(config_file=os.path.join(ROOT, "configs", "DCMIP", "demo_cpu.yml"), eval_only=False,
                              opts=["MODEL.BACKBONE.PRETRAIN_PATH", weights, "OUTPUT_DIR", str(tmp_path / "out"),
                                    "SOLVER.MAX_EPOCH", "2", "UNSUP.DCMIP.STAGE1_EPOCHS", "1", "UNSUP.ITERS", "2",
                                    "SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_WORKERS", "0",
                                    "UNSUP.VIS.MONTAGE", "False", "INPUT.SIZE_TRAIN", "[64, 32]",
                                    "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING.SIZE", "2", *NO_TESTS])
    cfg = load_cfg(args)
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR)
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    recorder = StageStart()
    trainer.register_hooks([recorder])
    assert trainer.train() is None
    student, teacher = recorder.stage2_start
    for key, value in recorder.after_stage1.items():
        if not key.startswith("memory."):  # the memory is rebuilt for stage 2
            assert torch.equal(student[key], value) and torch.equal(teacher[key], value), key
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "model_best.pth"))
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))
