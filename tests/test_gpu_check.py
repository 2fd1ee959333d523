"""tools/gpu_check.py without a GPU: its comparisons run CPU against CPU, and without CUDA
the script says so and exits 0."""
import importlib.util
import json
import os

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "tools", "gpu_check.py"))
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.mark.parametrize("name", list(gpu_check.HEADS))
def test_every_head_equals_itself_on_the_same_device(name):
    diffs = gpu_check.compare_head(name, "cpu", "cpu")
    assert diffs == {"reset": 0.0, "loss": 0.0, "grad": 0.0, "memory": 0.0, "finite": 1.0}


@pytest.mark.parametrize("name", list(gpu_check.HEADS))
def test_autocast_side_differs_within_tolerance(name):
    """The autocast path really runs in low precision (bf16 on the CPU) and stays close; every
    head's backward works under it (O2CAP's L_intra + L_merge failed with a dtype mismatch)."""
    diffs = gpu_check.compare_head(name, "cpu", "cpu", amp=True)
    assert diffs["finite"] == 1.0 and diffs["reset"] == 0.0 and diffs["memory"] == 0.0
    assert 0 < diffs["loss"] <= gpu_check.AMP_TOL["loss"] and 0 < diffs["grad"] <= gpu_check.AMP_TOL["grad"]


def test_a_difference_is_measured(monkeypatch):
    """A perturbed update on one side shows up in the memory difference."""
    head_cls = type(gpu_check.build_memory_head(gpu_check.head_cfg("Cluster Contrast, sequential")))
    update = head_cls.update
    calls = []

    def perturbed(self, features, batch):
        update(self, features if calls else features.roll(1, dims=0), batch)
        calls.append(1)

    monkeypatch.setattr(head_cls, "update", perturbed)
    assert gpu_check.compare_head("Cluster Contrast, sequential", "cpu", "cpu")["memory"] > 1e-3


def test_clustering_comparison_on_the_cpu():
    result = gpu_check.compare_clustering("cpu", "cpu", n=600)
    assert result["identical"] == 1.0 and result["ari"] == 1.0 and result["clusters"] > 5


def test_without_cuda_it_says_so_and_exits_0(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    output = tmp_path / "gpu_check.md"
    assert gpu_check.main(["--output", str(output)]) == 0
    assert "no CUDA device" in capsys.readouterr().out
    assert not output.exists()


def test_table_and_exit_code(tmp_path, monkeypatch):
    """--device cpu --skip-training: one row per head and precision, the clustering row and the
    four rate rows, the rates stored as JSON; exit 1 exactly when a row fails."""
    monkeypatch.setattr(gpu_check, "compare_clustering", lambda device: {"identical": 1.0, "ari": 1.0, "clusters": 9.0})
    real_rates = gpu_check.measure_rates  # full size is a GPU's work: minutes on 2 CPU cores
    monkeypatch.setattr(gpu_check, "measure_rates", lambda device: real_rates(
        device, batch=2, size=(64, 32), knn_n=256, dim=64, repeats=1))
    output = tmp_path / "gpu_check.md"
    rates = tmp_path / "gpu_rates.json"
    code = gpu_check.main(["--device", "cpu", "--skip-training", "--output", str(output), "--rates", str(rates)])
    text = output.read_text()
    stored = json.loads(rates.read_text())
    assert set(stored["rates"]) == {"embed_img_s", "train_img_s", "train_fp32_img_s", "knn_tflops_fp32",
                                    "knn_tflops_fp16"}
    assert f"{stored['rates']['train_fp32_img_s']:,.0f} img/s" in text
    rows = [line for line in text.splitlines() if line.startswith("| ") and "check" not in line]
    assert len(rows) == 2 * len(gpu_check.HEADS) + 1 + 4
    assert sum("| measured" in row for row in rows) == 4
    assert code == (1 if "| FAIL" in text else 0)


def test_rates_are_measured_on_a_small_cpu_case():
    """The rate measurements run (here tiny, on the CPU) and give positive finite numbers."""
    rates = gpu_check.measure_rates("cpu", batch=2, size=(64, 32), knn_n=256, dim=64, repeats=1)
    assert set(rates) == {"embed_img_s", "train_img_s", "train_fp32_img_s", "knn_tflops_fp32", "knn_tflops_fp16"}
    assert all(0 < v < float("inf") for v in rates.values())
