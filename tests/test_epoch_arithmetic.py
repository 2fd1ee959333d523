"""epoch.md's GPU arithmetic (tools/benchmark_market_split.py): every cost follows from the
stored rates and the published configs' work per epoch."""
import importlib.util
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("benchmark_market_split",
                                              os.path.join(ROOT, "tools", "benchmark_market_split.py"))
bms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bms)


def _rates(tmp_path, **rates):
    path = tmp_path / "gpu_rates.json"
    path.write_text(json.dumps({"device": "GPU X", "torch": "2.x", "commit": "abc", "date": "2026-01-01",
                                "rates": rates}))
    return str(path)


def _cost(text, part):
    row = next(line for line in text.splitlines() if line.startswith(f"| {part} |"))
    return row.split(" | ")[-1].rstrip(" |")


def test_published_configs_work_per_epoch():
    assert bms.published_work("configs/O2CAP/msmt17.yml") == (400 * 32, False, 10)
    assert bms.published_work("configs/DCMIP/msmt17.yml") == (100 * 256, True, 10)


def test_costs_follow_from_the_rates(tmp_path):
    text = bms.gpu_arithmetic(_rates(tmp_path, embed_img_s=32621.0, train_img_s=2560.0, train_fp32_img_s=1280.0,
                                     knn_tflops_fp32=2 * 32621 ** 2 * 2048 / 1e12, knn_tflops_fp16=1.0))
    assert _cost(text, "features") == "1.0 s"
    assert _cost(text, "features, DCMIP stage 2") == "2.0 s"
    assert _cost(text, "kNN, exact on the GPU (blocked fp32 matrix products)") == "1.00 s"
    assert _cost(text, "training steps, O2CAP") == "10.0 s"
    assert _cost(text, "training steps, DCMIP") == "10.0 s"
    evaluation = (11659 + 82161) / 32621 + bms.RANKING_GPU_S
    assert _cost(text, "evaluation (every 10 epochs)") == f"{evaluation:.1f} s, {evaluation / 10:.1f} s per epoch amortised"
    # O2CAP: features 1 + kNN 1 + Jaccard/DBSCAN 1.0 + training 10 + evaluation / 10
    assert f"about {1 + 1 + bms.POST_KNN_S['O2CAP'] + 10 + evaluation / 10:.0f} s" in text


def test_o2cap_without_its_fp32_rate_is_a_bound(tmp_path):
    text = bms.gpu_arithmetic(_rates(tmp_path, embed_img_s=1000.0, train_img_s=1280.0, knn_tflops_fp32=10.0,
                                     knn_tflops_fp16=20.0))
    assert _cost(text, "training steps, O2CAP") == "≥ 10.0 s"
    assert "not measured yet" in text


def test_no_rates_says_how_to_get_them(tmp_path):
    assert "make gpu-check" in bms.gpu_arithmetic(str(tmp_path / "missing.json"))


def test_each_method_is_costed_in_its_configs_precision(tmp_path, monkeypatch):
    """A config that turns AMP on for O2CAP is costed at the AMP rate, not the fp32 one."""
    monkeypatch.setattr(bms, "published_work", lambda config: (12800, True, 10))
    text = bms.gpu_arithmetic(_rates(tmp_path, embed_img_s=1000.0, train_img_s=1280.0, train_fp32_img_s=640.0,
                                     knn_tflops_fp32=10.0, knn_tflops_fp16=20.0))
    assert _cost(text, "training steps, O2CAP") == "10.0 s"
    assert "12,800 images under AMP (configs/O2CAP/msmt17.yml)" in text
