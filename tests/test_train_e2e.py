"""End to end on tiny generated data: train, checkpoint, eval-only, and the bad-input errors
a user meets first. Each run is a subprocess of tools/train_net.py, exactly as users call it."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
CONFIG = os.path.join(ROOT, "configs", "ClusterContrast", "demo_cpu.yml")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny demo dataset and the converted ImageNet MobileNetV2 weights."""
    from dcmip.data.demo import generate_demo_dataset
    from dcmip.weights import prepare_mobilenetv2_weights

    root = tmp_path_factory.mktemp("e2e")
    generate_demo_dataset(root / "datasets" / "demo-market", seed=0, num_train_ids=24, num_test_ids=12)
    weights = prepare_mobilenetv2_weights(str(root / "mobilenetv2.pth"))
    return root, weights


def run(args, root, check=True):
    env = dict(os.environ, FASTREID_DATASETS=str(root / "datasets"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, TRAIN_NET, *args], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"train_net failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def tiny(root, weights, *extra):
    return ["--config-file", CONFIG, "MODEL.BACKBONE.PRETRAIN_PATH", weights, "OUTPUT_DIR", str(root / "out"),
            "SOLVER.MAX_EPOCH", "2", "UNSUP.ITERS", "3", "SOLVER.IMS_PER_BATCH", "16", "TEST.EVAL_PERIOD", "1",
            "DATALOADER.NUM_WORKERS", "0", *extra]


def test_train_then_eval_only_on_the_written_checkpoint(workspace):
    root, weights = workspace
    out = run(tiny(root, weights), root)
    log = out.stdout + out.stderr
    assert "epoch 0 clustering: clusters" in log and "epoch 1 clustering: clusters" in log
    assert "nmi" in log
    for name in ("model_best.pth", "model_last.pth", "model_final.pth", "metrics.json"):
        assert (root / "out" / name).is_file(), name
    # Every epoch's clustering statistics and evaluation reach metrics.json (the plots read them).
    with open(root / "out" / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    assert sum("cluster/clusters" in r for r in records) == 2
    assert sum("mAP" in r for r in records) == 2
    assert sum("Rank-1" in r and "Rank-10" in r for r in records) == 2
    # The epoch profile (docs/benchmarks/epoch.md): every phase of every epoch, logged and kept.
    assert "epoch 0 time:" in log and "epoch 1 time:" in log
    phases = ("features", "knn", "jaccard", "dbscan", "train", "evaluation", "checkpoint")
    for phase in phases:
        assert sum(f"time/{phase}" in r for r in records) == 2, phase
        assert all(r[f"time/{phase}"] >= 0 for r in records if f"time/{phase}" in r), phase

    ev = run(["--config-file", CONFIG, "--eval-only", "MODEL.WEIGHTS", str(root / "out" / "model_final.pth"),
              "OUTPUT_DIR", str(root / "eval"), "DATALOADER.NUM_WORKERS", "0"], root)
    log = ev.stdout + ev.stderr
    assert "Rank-1" in log and "mAP" in log and "mINP" in log


def test_missing_dataset_root_says_what_to_do(workspace, tmp_path):
    root, weights = workspace
    env_root = tmp_path  # no datasets/ folder here
    proc = run(tiny(root, weights), env_root, check=False)
    assert proc.returncode != 0
    assert "demo-market" in proc.stderr and "make demo" in proc.stderr


def test_missing_weights_file_says_what_to_do(workspace):
    root, _ = workspace
    proc = run(tiny(root, str(root / "no_such_weights.pth")), root, check=False)
    assert proc.returncode != 0
    assert "no_such_weights.pth" in proc.stderr and "make weights" in proc.stderr


def test_unknown_method_name_lists_the_choices(workspace):
    root, weights = workspace
    proc = run(tiny(root, weights, "UNSUP.MEMORY.NAME", "NoSuchMethod"), root, check=False)
    assert proc.returncode != 0
    assert "UNSUP.MEMORY.NAME" in proc.stderr and "ClusterMemory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_o2cap_config_trains_and_logs_association_statistics(workspace):
    root, weights = workspace
    o2cap = os.path.join(ROOT, "configs", "O2CAP", "demo_cpu.yml")
    args = tiny(root, weights, "SOLVER.WARMUP_ITERS", "2")
    args[1] = o2cap
    args[args.index("OUTPUT_DIR") + 1] = str(root / "o2cap")
    out = run(args, root)
    log = out.stdout + out.stderr
    assert "loss_offline" in log and "loss_online" in log
    assert "memory statistics: association/" in log
    assert (root / "o2cap" / "model_final.pth").is_file()


def test_two_processes_through_fastreids_launcher_on_cpu(workspace):
    """`--num-gpus 2` without GPUs: the compat launcher starts two gloo processes; DCMIP's two
    stages (checkpoint hand-over between ranks, teacher evaluation) run under it."""
    root, weights = workspace
    args = tiny(root, weights, "UNSUP.DCMIP.STAGE1_EPOCHS", "1", "UNSUP.SAMPLER.NUM_INSTANCES", "4")
    args[1] = os.path.join(ROOT, "configs", "DCMIP", "demo_cpu.yml")
    args[args.index("OUTPUT_DIR") + 1] = str(root / "ddp")
    out = run(["--num-gpus", "2", *args], root)
    log = out.stdout + out.stderr
    assert "process 0 of 2" in log and "epoch 1 clustering: clusters" in log and "teacher mAP" in log
    assert (root / "ddp" / "model_final.pth").is_file()


@pytest.mark.parametrize("num_gpus", ["1", "2"])
def test_resume_from_another_methods_checkpoint_says_so(workspace, num_gpus):
    """With 2 processes the workers raise it: each prints one line instead of a traceback."""
    from dcmip.engine.checkpoint import AtomicCheckpointer, checkpoint_metadata
    from test_checkpoint_compat import build

    root, weights = workspace
    cfg, model = build("DCMIP/demo_cpu.yml")
    out = root / f"other_method{num_gpus}"
    out.mkdir()
    AtomicCheckpointer(model, str(out), metadata=checkpoint_metadata(cfg)).save("model_last", epoch=0)
    args = tiny(root, weights)
    args[args.index("OUTPUT_DIR") + 1] = str(out)
    proc = run(["--num-gpus", num_gpus, "--resume", *args], root, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "error: --resume:" in proc.stderr and "DCMIP (DiscrepantProxyMemory)" in proc.stderr
    assert "fresh OUTPUT_DIR" in proc.stderr
