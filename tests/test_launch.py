"""The same 2-process training started two more ways on CPU (gloo) than test_train_e2e's
--num-gpus 2: torchrun on one node, and two "machines" of one process each through
fastreid's --num-machines / --dist-url. Both must end with identical metrics and pseudo labels
(same clustering, same global batches, same memories)."""
import json
import os
import socket
import subprocess
import sys

import pytest

from test_train_e2e import ROOT, TRAIN_NET, tiny, workspace  # noqa: F401  (fixture)

O2CAP = os.path.join(ROOT, "configs", "O2CAP", "demo_cpu.yml")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _args(root, weights, out):
    args = tiny(root, weights, "SOLVER.MAX_EPOCH", "1", "UNSUP.ITERS", "2")
    args[1] = O2CAP
    args[args.index("OUTPUT_DIR") + 1] = str(out)
    return args


def _env(root):
    return dict(os.environ, FASTREID_DATASETS=str(root / "datasets"), PYTHONUNBUFFERED="1",
                OMP_NUM_THREADS="1")


def _final_metrics(out):
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    evaluated = [r for r in records if "mAP" in r]
    clusters = [r["cluster/clusters"] for r in records if "cluster/clusters" in r]
    return {k: evaluated[-1][k] for k in ("mAP", "Rank-1", "mINP")}, clusters


def _check(procs):
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"{proc.args}\n{stdout[-3000:]}\n{stderr[-3000:]}"


@pytest.fixture(scope="module")
def two_process_runs(workspace):  # noqa: F811
    root, weights = workspace
    outs = {name: root / f"launch_{name}" for name in ("torchrun", "machines")}
    torchrun = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), TRAIN_NET,
         *_args(root, weights, outs["torchrun"])],
        cwd=root, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _check([torchrun])
    url = f"tcp://127.0.0.1:{_free_port()}"
    machines = [subprocess.Popen(
        [sys.executable, TRAIN_NET, "--num-gpus", "1", "--num-machines", "2", "--machine-rank", str(rank),
         "--dist-url", url, *_args(root, weights, outs["machines"])],
        cwd=root, env=_env(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    _check(machines)
    return {name: _final_metrics(out) for name, out in outs.items()}


def test_torchrun_and_two_machines_train_the_same(two_process_runs):
    reference = two_process_runs["torchrun"]
    assert reference[0]["mAP"] > 0 and reference[1]
    assert two_process_runs["machines"] == reference


def test_torchrun_rejects_fastreids_process_flags(workspace):  # noqa: F811
    root, weights = workspace
    env = dict(_env(root), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    proc = subprocess.run([sys.executable, TRAIN_NET, "--num-gpus", "2", *_args(root, weights, root / "x")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "torchrun has started the processes" in proc.stderr and "Traceback" not in proc.stderr
