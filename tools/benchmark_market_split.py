#!/usr/bin/env python
"""Issue 6 benchmark: every method on the real Market-1501 split (MarketSplit) on CPU.

    .venv/bin/python tools/benchmark_market_split.py --rows all            # run all rows, then assemble
    .venv/bin/python tools/benchmark_market_split.py --rows o2cap,dcmip    # some rows (rows run on their own)
    .venv/bin/python tools/benchmark_market_split.py --assemble            # table + plots from saved rows
    .venv/bin/python tools/benchmark_market_split.py --rows zero-shot,o2cap --smoke   # tiny pipeline check
    .venv/bin/python tools/benchmark_market_split.py --protocol two-camera --rows all  # issue 13: cameras c5, c6
    .venv/bin/python tools/benchmark_market_split.py --protocol demo-two-camera --rows all  # issue 13: demo data

Each row runs tools/train_net.py as a subprocess with OUTPUT_DIR <out>/<row> and saves
<out>/<row>/row.json (final metrics, wall time, commit). --assemble (also done after runs) writes
docs/results/market1501-split.md and docs/results/market1501-split-<row>.png. See
docs/market_split_benchmark.md. --protocol two-camera runs the rows of the two-camera protocol
(MarketSplitTwoCameras, docs/composite.md) into output/two_camera and
docs/results/market1501-two-camera.md; --protocol demo-two-camera runs each method's demo config on the
generated two-camera demo set (DemoTwoCameras) into output/demo_two_camera and
docs/results/demo-two-camera.md.
"""
import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
from dcmip import provenance  # noqa: E402

ROWS = {
    # row: (config, extra args)
    "zero-shot": ("configs/O2CAP/market_split_cpu.yml", ["--eval-only"]),
    "cluster-contrast": ("configs/ClusterContrast/market_split_cpu.yml", []),
    "baseline2": ("configs/O2CAP/market_split/baseline2.yml", []),
    "cap4": ("configs/O2CAP/market_split/cap4.yml", []),
    "o2cap3": ("configs/O2CAP/market_split/o2cap3.yml", []),
    "o2cap": ("configs/O2CAP/market_split/o2cap.yml", []),
    "dcmip": ("configs/DCMIP/market_split_cpu.yml", []),
    "dcmip-o2cap": ("configs/DCMIP/o2cap_market_split_cpu.yml", []),
}
TWO_CAMERA_ROWS = {
    "zero-shot": ("configs/O2CAP/two_camera_cpu.yml", ["--eval-only"]),
    "cluster-contrast": ("configs/ClusterContrast/two_camera_cpu.yml", []),
    "cap4": ("configs/O2CAP/two_camera_cap4_cpu.yml", []),
    "o2cap": ("configs/O2CAP/two_camera_cpu.yml", []),
    "dcmip": ("configs/DCMIP/two_camera_cpu.yml", []),
    "dcmip-o2cap": ("configs/DCMIP/o2cap_two_camera_cpu.yml", []),
}
# The generated two-camera demo set (tools/make_demo_data.py --num-cams 2 --camera-shift strong):
# each method's demo config, a few minutes each, on DemoTwoCameras instead of DemoMarket.
DEMO_TWO_CAMERAS = ["DATASETS.NAMES", '("DemoTwoCameras",)', "DATASETS.TESTS", '("DemoTwoCameras",)']
DEMO_TWO_CAMERA_ROWS = {
    "zero-shot": ("configs/O2CAP/demo_cpu.yml", ["--eval-only"] + DEMO_TWO_CAMERAS),
    "cluster-contrast": ("configs/ClusterContrast/demo_cpu.yml", DEMO_TWO_CAMERAS),
    # Table II's CAP4: L_off alone, with O2CAP's proxy-balanced sampling.
    "cap4": ("configs/O2CAP/demo_cpu.yml", DEMO_TWO_CAMERAS + ["UNSUP.O2CAP.LOSSES", '["offline"]']),
    "o2cap": ("configs/O2CAP/demo_cpu.yml", DEMO_TWO_CAMERAS),
    "dcmip": ("configs/DCMIP/demo_cpu.yml", DEMO_TWO_CAMERAS),
    "dcmip-o2cap": ("configs/DCMIP/o2cap_demo_cpu.yml", DEMO_TWO_CAMERAS),
}
# protocol: (rows, dataset, default output root, default doc)
PROTOCOLS = {
    "split": (ROWS, "MarketSplit", os.path.join("output", "market_split"),
              os.path.join("docs", "results", "market1501-split.md")),
    "two-camera": (TWO_CAMERA_ROWS, "MarketSplitTwoCameras", os.path.join("output", "two_camera"),
                   os.path.join("docs", "results", "market1501-two-camera.md")),
    "demo-two-camera": (DEMO_TWO_CAMERA_ROWS, "DemoTwoCameras", os.path.join("output", "demo_two_camera"),
                        os.path.join("docs", "results", "demo-two-camera.md")),
}
# Title and set-up line of each protocol's table.
PROTOCOL_TEXT = {
    "split": ("Market-1501 split (MarketSplit) on CPU",
              "ImageNet MobileNetV2, 128×64 input, fp32, a budget of at most 15 minutes per method on 2 cores "
              "(docs/market_split_benchmark.md)."),
    "two-camera": ("Market-1501 split (MarketSplitTwoCameras) on CPU",
                   "ImageNet MobileNetV2, 128×64 input, fp32, a budget of at most 15 minutes per method on 2 cores "
                   "(docs/market_split_benchmark.md); cameras c5 and c6 only (docs/composite.md)."),
    "demo-two-camera": ("Generated two-camera demo data (DemoTwoCameras) on CPU",
                        "ImageNet MobileNetV2, 128×64 input, fp32; each method's demo config (configs/*/demo_cpu.yml, "
                        "a few minutes on 2 cores) on the demo generator's two cameras with a strong shift "
                        "(`tools/make_demo_data.py --root datasets/demo-two-cameras --num-cams 2 --camera-shift "
                        "strong`; docs/composite.md)."),
}
# Rows trained by DCMIP's two stages: a stage-1 row and stage-2 student and teacher rows.
TWO_STAGE = {"dcmip": "DCMIP", "dcmip-o2cap": "DCMIP + O2CAP"}
LABELS = {"zero-shot": "ImageNet MobileNetV2 (zero-shot)", "cluster-contrast": "Cluster Contrast",
          "baseline2": "O2CAP Baseline2", "cap4": "O2CAP CAP4 (L_off, PB sampling)",
          "o2cap3": "O2CAP O2CAP3 (merged)", "o2cap": "O2CAP", **TWO_STAGE}
SMOKE_OPTS = ["UNSUP.ITERS", "2", "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "SOLVER.WARMUP_ITERS", "0",
              "SOLVER.STEPS", "(1,)", "TEST.IMS_PER_BATCH", "64"]
SMOKE_DCMIP = ["SOLVER.MAX_EPOCH", "2", "UNSUP.DCMIP.STAGE1_EPOCHS", "1", "UNSUP.DCMIP.STAGE_LR_STEPS", "(1,)"]
METRICS = ("mAP", "Rank-1", "Rank-5", "Rank-10")


GPU_RATES = os.path.join(ROOT, "docs", "benchmarks", "gpu_rates.json")
# MSMT17 as the published configs train it: list_train + list_val, 11,659 query x 82,161 gallery.
MSMT17_TRAIN, MSMT17_TEST, FEATURE_DIM = 32621, 11659 + 82161, 2048
# Measured on the CPU, cited (docs/benchmarks/clustering.md: N = 32,621 on 2 cores) and on the
# H200 (docs/benchmarks/evaluation_gpu.md: the MSMT17-size ranking).
POST_KNN_S = {"O2CAP": 1.0, "DCMIP": 1.6}
RANKING_GPU_S = 0.2


def published_work(config):
    """(images trained per epoch, mixed precision, evaluation period) of a published config."""
    from fastreid.config import get_cfg
    from dcmip.config import add_dcmip_config

    # Merged without load_cfg's checks: a GPU config is read here on machines without a GPU.
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, config))
    return cfg.UNSUP.ITERS * cfg.SOLVER.IMS_PER_BATCH, bool(cfg.SOLVER.AMP.ENABLED), cfg.TEST.EVAL_PERIOD


def gpu_arithmetic(path=GPU_RATES):
    """epoch.md's "MSMT17 on one GPU" section: each part of an epoch from the per-image rates
    `make gpu-check` stored in ``path`` (tools/gpu_check.py), with the work per epoch the
    published configs give (configs/O2CAP/msmt17.yml: 400 steps x 32 images in fp32,
    configs/DCMIP/msmt17.yml: 100 x 256 under AMP)."""
    (o2cap_images, o2cap_amp, o2cap_period), (dcmip_images, dcmip_amp, dcmip_period) = (
        published_work("configs/O2CAP/msmt17.yml"), published_work("configs/DCMIP/msmt17.yml"))
    if not os.path.isfile(path):
        return ("## MSMT17 on one GPU: the arithmetic\n\nNo GPU rates are stored yet: run `make gpu-check` on a "
                f"GPU machine (it writes {os.path.relpath(path, ROOT)}), then `--assemble`.\n")
    with open(path) as f:
        stored = json.load(f)
    r = stored["rates"]
    embed, train = r["embed_img_s"], r["train_img_s"]
    feat = MSMT17_TRAIN / embed
    knn_s = 2 * MSMT17_TRAIN ** 2 * FEATURE_DIM / (r["knn_tflops_fp32"] * 1e12)
    evaluation = MSMT17_TEST / embed + RANKING_GPU_S

    def training(images, amp):
        """(seconds, rate text, cost text) of an epoch's training steps in the config's precision."""
        if amp:
            return images / train, f"{train:,.0f} img/s (AMP, batch 256)", f"{images / train:.1f} s"
        if "train_fp32_img_s" in r:
            rate = r["train_fp32_img_s"]
            return images / rate, f"{rate:,.0f} img/s (fp32, batch 32)", f"{images / rate:.1f} s"
        # Stored before gpu_check measured fp32 at batch 32: the AMP batch-256 rate bounds it.
        return (images / train, f"not measured yet in fp32 at batch 32; at most {train:,.0f} img/s (AMP, batch 256)",
                f"≥ {images / train:.1f} s")

    (o2cap_train, o2cap_rate, o2cap_cost), (dcmip_train, dcmip_rate, dcmip_cost) = (
        training(o2cap_images, o2cap_amp), training(dcmip_images, dcmip_amp))
    o2cap = feat + knn_s + POST_KNN_S["O2CAP"] + o2cap_train + evaluation / o2cap_period
    stage1 = feat + knn_s + POST_KNN_S["DCMIP"] + dcmip_train + evaluation / dcmip_period
    stage2 = stage1 + feat
    source = stored.get("source", f"`make gpu-check` at commit {stored['commit']}")
    rows = [
        ("features", f"{MSMT17_TRAIN:,} train images (list_train + list_val)", f"{embed:,.0f} img/s", f"{feat:.1f} s"),
        ("features, DCMIP stage 2", "student + teacher, one pass over the loader", f"{embed:,.0f} img/s per network",
         f"{2 * feat:.1f} s"),
        ("kNN, exact on the GPU (blocked fp32 matrix products)",
         f"{MSMT17_TRAIN:,}² pairs × d = {FEATURE_DIM:,}: {2 * MSMT17_TRAIN ** 2 * FEATURE_DIM / 1e12:.1f} TFLOP",
         f"{r['knn_tflops_fp32']:.1f} TFLOP/s (fp32 product; the top-k adds to it)", f"{knn_s:.2f} s"),
        ("Jaccard + DBSCAN (CPU)", f"N = {MSMT17_TRAIN:,}",
         "measured on 2 cores (docs/benchmarks/clustering.md)",
         f"{POST_KNN_S['O2CAP']:.1f} s (O2CAP) / {POST_KNN_S['DCMIP']:.1f} s (DCMIP)"),
        ("training steps, O2CAP", f"{o2cap_images:,} images", o2cap_rate, o2cap_cost),
        ("training steps, DCMIP", f"{dcmip_images:,} images", dcmip_rate, dcmip_cost),
        (f"evaluation (every {o2cap_period} / {dcmip_period} epochs)" if o2cap_period != dcmip_period
         else f"evaluation (every {dcmip_period} epochs)", f"{MSMT17_TEST:,} images embedded; 11,659 × 82,161 ranked",
         f"{embed:,.0f} img/s; ranking {RANKING_GPU_S} s (docs/benchmarks/evaluation_gpu.md)",
         f"{evaluation:.1f} s, {evaluation / dcmip_period:.1f} s per epoch amortised"),
    ]
    table = ["| Part | Work per epoch | Rate | Cost per epoch |", "|---|---|---|---|"]
    table += [f"| {' | '.join(row)} |" for row in rows]
    clustering_share = POST_KNN_S["O2CAP"] / o2cap, POST_KNN_S["DCMIP"] / stage2
    return "\n".join([
        "## MSMT17 on one GPU: the arithmetic", "",
        f"Rates: {source} on one {stored['device']} (torch {stored['torch']}, {stored['date']}; "
        "docs/benchmarks/gpu_check.md), stored in docs/benchmarks/gpu_rates.json. They are the GPU's ceilings: "
        "ResNet-50 at 256×128 on synthetic tensors, no data loading. The CPU-side figures are measured on "
        f"2 cores. Per epoch, the published configs train O2CAP: {o2cap_images:,} images "
        f"{'under AMP' if o2cap_amp else 'in fp32'} (configs/O2CAP/msmt17.yml), and DCMIP: {dcmip_images:,} images "
        f"{'under AMP' if dcmip_amp else 'in fp32'} "
        "(configs/DCMIP/msmt17.yml).", "",
        *table, "",
        f"Sum: an MSMT17 epoch costs about {o2cap:.0f} s of GPU and clustering work for O2CAP"
        f"{' (at least: its fp32 rate is not measured yet)' if o2cap_cost.startswith('≥') else ''}, "
        f"{stage1:.0f} s for DCMIP stage 1 and {stage2:.0f} s for stage 2. At these rates the network is no "
        f"longer the whole story: the clustering's CPU part (Jaccard + DBSCAN) is ~{100 * clustering_share[0]:.0f} % "
        f"(O2CAP) and ~{100 * clustering_share[1]:.0f} % (DCMIP stage 2) of it, and the data loader must decode and "
        f"augment {o2cap_images:,}-{dcmip_images:,} training images per epoch at the GPU's {train:,.0f} img/s. "
        "Market's small JPEGs decode at 5,405 img/s in one process (docs/benchmarks/extraction.md), so the "
        "default 8 loader workers are in the range, but MSMT17's larger JPEGs and the augmentations were not "
        "measured on that machine: the loader may bound the real epoch. The features avoid the decoding after "
        "the first epoch (UNSUP.FEATURE_CACHE_MB: 32,621 images at 256×128 are 3.2 GB). The kNN stays well "
        "under a second until N reaches hundreds of thousands of images (docs/clustering.md).", ""])


def read_metrics(path):
    out = []
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:
                    pass
    return out


def load_cfg(config, opts):
    import dcmip  # noqa: F401
    from dcmip.engine.defaults import load_cfg as _load
    return _load(argparse.Namespace(config_file=os.path.join(ROOT, config), opts=list(opts), eval_only=False))


def profile_steps(config, opts, n):
    """Seconds per step of backbone-only forward+backward on a random batch of IMS_PER_BATCH images.

    Compared with the mean step time in metrics.json ("time": data loading excluded, loss, memory
    update and optimizer included), 1 - backbone / step is the share of step time outside the backbone.
    """
    import torch
    cfg = load_cfg(config, opts)
    from dcmip.engine.trainer import UnsupervisedTrainer
    model = UnsupervisedTrainer.build_model(cfg)
    model.train()
    h, w = cfg.INPUT.SIZE_TRAIN
    x = torch.randn(cfg.SOLVER.IMS_PER_BATCH, 3, h, w)
    times = []
    for i in range(n + 1):
        t = time.perf_counter()
        f = model.backbone(x)
        f.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return sum(times) / len(times)


def run_row(rows, row, out_root, smoke, profile_n, extra):
    config, row_args = rows[row]
    # The row's flags (--eval-only) stay flags; its KEY VALUE overrides join the opts.
    args = [a for a in row_args if a.startswith("--")]
    out = os.path.join(out_root, row)
    os.makedirs(out, exist_ok=True)
    opts = [a for a in row_args if not a.startswith("--")] + ["OUTPUT_DIR", out]
    if smoke and row != "zero-shot":
        opts += SMOKE_OPTS + (SMOKE_DCMIP if row in TWO_STAGE else [])
    opts += extra
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", config] + args + opts
    print("+", " ".join(cmd), flush=True)
    t0 = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    wall = time.time() - t0
    rec = {"row": row, "config": config, "command": " ".join(cmd[1:]), "invocation": invocation(),
           "extra_opts": list(extra), "rc": rc, "wall_s": round(wall, 1),
           "commit": provenance.commit(), "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                          f"{os.cpu_count()} cores, torch threads from env",
           "smoke": smoke, "opts": opts}
    if rc == 0 and profile_n and row != "zero-shot":
        rec["backbone_step_s"] = profile_steps(config, opts, profile_n)
    with open(os.path.join(out, "row.json"), "w") as f:
        json.dump(rec, f, indent=1)
    print(f"[{row}] rc={rc} wall={wall:.0f}s -> {out}/row.json", flush=True)
    return rc


def invocation() -> str:
    """This benchmark's command line, as run from the repository root."""
    return " ".join([".venv/bin/python", os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] + sys.argv[1:])


def evaluations(records, key="mAP"):
    return [r for r in records if key in r]


def log_tables(path):
    """Evaluations printed as fastreid's markdown table in log.txt (--eval-only writes no metrics.json)."""
    out, header = [], None
    if not os.path.isfile(path):
        return out
    with open(path) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
            if cells and "mAP" in cells:
                header = cells
            elif cells and header and not cells[0].startswith(":") and len(cells) == len(header):
                try:
                    out.append({k: float(v) for k, v in zip(header, cells) if k in METRICS})
                except ValueError:
                    pass
                header = None
    return out


def fill_ranks(evals, tables):
    """Rank-k missing from metrics.json (runs before the EpochEvalHook fix stored only float
    metrics, and fastreid's Rank-k are numpy float32) taken from the log's table with the same mAP."""
    for r in evals:
        for prefix in ("", "teacher/"):
            m = r.get(prefix + "mAP")
            if m is None or prefix + "Rank-1" in r:
                continue
            match = [t for t in tables if abs(t["mAP"] - m) < 0.006]
            if match:
                r.update({prefix + k: match[-1][k] for k in METRICS if k in match[-1]})
    return evals


def student_maps(log_path, records=()):
    """The student's mAP at every stage-2 evaluation, in order: metrics.json's student/mAP, or
    for runs before it was logged the log's "student mAP X, teacher mAP Y" lines (metrics.json's
    plain keys hold model_best's candidate there)."""
    logged = [r["student/mAP"] for r in records if "student/mAP" in r]
    if logged:
        return logged
    if not os.path.isfile(log_path):
        return []
    with open(log_path) as f:
        return [float(m.group(1)) for m in (re.search(r"student mAP ([0-9.]+), teacher mAP", line) for line in f) if m]


def student_table(log_path, tables):
    """The metrics of the student's last stage-2 evaluation: the log table whose mAP is the
    one of the last "student mAP X, teacher mAP Y" line; None without such a line."""
    student = (student_maps(log_path) or [None])[-1]
    matches = [t for t in tables if student is not None and abs(t["mAP"] - student) < 0.006]
    return {k: matches[-1].get(k) for k in METRICS} if matches else None


def row_results(out_root, row, ims_per_batch, iters, stage1_epochs=None):
    """[(label, {metric: value}, extra)] for one saved row."""
    path = os.path.join(out_root, row)
    with open(os.path.join(path, "row.json")) as f:
        rec = json.load(f)
    records = read_metrics(os.path.join(path, "metrics.json"))
    tables = log_tables(os.path.join(path, "log.txt"))
    evals = fill_ranks(evaluations(records), tables) or tables
    steps = [r["time"] for r in records if "time" in r]
    step_s = sum(steps) / len(steps) if steps else None
    extra = {"wall_s": rec["wall_s"], "rc": rec["rc"],
             "img_s": ims_per_batch / step_s if step_s else None, "step_s": step_s}
    if step_s and rec.get("backbone_step_s"):
        extra["outside_share"] = max(0.0, 1 - rec["backbone_step_s"] / step_s)
    if not evals:
        return rec, records, [(LABELS.get(row, row), {}, extra)]
    if row not in TWO_STAGE:
        return rec, records, [(LABELS.get(row, row), {k: evals[-1].get(k) for k in METRICS}, extra)]
    name = TWO_STAGE[row]
    stage1_end = stage1_epochs * iters
    s1 = [r for r in evals if r.get("iteration", 0) < stage1_end and "teacher/mAP" not in r]
    s2 = [r for r in evals if r.get("iteration", 0) >= stage1_end]
    out = []
    if s1:
        best = max(s1, key=lambda r: r["mAP"])
        out.append((f"{name} stage 1 (best)", {k: best.get(k) for k in METRICS}, extra))
    if s2:
        last = s2[-1]
        # In stage 2 metrics.json's plain keys hold model_best's candidate (the better of
        # student and teacher). The student's own figures are under student/ (runs since
        # session 7), in the log for older runs.
        if "student/mAP" in last:
            student = {k: last.get("student/" + k) for k in METRICS}
        else:
            student = student_table(os.path.join(path, "log.txt"), tables)
            if student and abs(last["mAP"] - student["mAP"]) < 0.006:
                student = None  # the student was the candidate: metrics.json has it unrounded
        out.append((f"{name} stage 2 student", student or {k: last.get(k) for k in METRICS}, extra))
        tl = [r for r in s2 if "teacher/mAP" in r]
        if tl:
            out.append((f"{name} stage 2 teacher", {k: tl[-1].get("teacher/" + k) for k in METRICS}, extra))
    return rec, records, out or [(name, {}, extra)]


def plot(records, iters, path, title, zero_shot_map=None, stage2_student=()):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    keys = ("mAP", "cluster/clusters", "cluster/images_kept", "cluster/nmi")
    names = ("mAP (%)", "clusters", "train images in a cluster", "pseudo-label NMI")
    for ax, key, name in zip(axes, keys, names):
        pts = [(r.get("iteration", 0) / iters, r[key]) for r in records if key in r]
        if key == "mAP" and stage2_student:
            # Stage-2 points: the student's own mAP, not model_best's candidate.
            student = iter(stage2_student)
            pts = [(x, next(student, y) if "teacher/mAP" in r else y)
                   for (x, y), r in zip(pts, [r for r in records if key in r])]
        tp = []
        if key == "mAP":
            tp = [(r.get("iteration", 0) / iters, r["teacher/mAP"]) for r in records if "teacher/mAP" in r]
            if tp:
                ax.plot(*zip(*tp), "s--", label="teacher")
        if pts:
            # "student" only beside a teacher: a single-network method's line is its model.
            ax.plot(*zip(*pts), "o-", label=("student" if tp else "model") if key == "mAP" else None)
        if key == "mAP" and zero_shot_map is not None:
            ax.axhline(zero_shot_map, color="gray", ls=":", label="zero-shot")
            ax.axhline(4 * zero_shot_map, color="red", ls=":", label="4x zero-shot")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        if key == "mAP" and ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def fmt(v, p=1):
    return "–" if v is None else f"{v:.{p}f}"


def last_value(records, key):
    values = [r[key] for r in records if key in r]
    return values[-1] if values else None


PROFILE_PHASES = (("features", "features"), ("knn", "kNN"), ("jaccard", "Jaccard"), ("dbscan", "DBSCAN"),
                  ("montage", "montage"), ("train", "training steps"), ("evaluation", "evaluation"),
                  ("checkpoint", "checkpoint"))


def epoch_profile(records, stages=None):
    """[(label, epochs, {phase: mean seconds per epoch})] from the time/<phase> scalars that
    dcmip.engine.profile.EpochProfileHook keeps per epoch (evaluation and checkpoint are
    averaged over all epochs, evaluated or not). ``stages``: (label, first iteration, end
    iteration) to profile separately, e.g. DCMIP's two stages."""
    epochs = [r for r in records if "time/train" in r]
    out = []
    for label, lo, hi in stages or [("", 0, float("inf"))]:
        part = [r for r in epochs if lo <= r.get("iteration", 0) < hi]
        if part:
            out.append((label, len(part), {k: sum(r.get(f"time/{k}", 0.0) for r in part) / len(part)
                                           for k, _ in PROFILE_PHASES}))
    return out


def write_epoch_profile(profiles, path, commands, machines, commits):
    """docs/benchmarks/epoch.md: where an epoch's time goes, per method."""
    head = "| Method | epochs | " + " | ".join(name for _, name in PROFILE_PHASES) + " | epoch (s) |"
    lines = [head, "|---" * (len(PROFILE_PHASES) + 3) + "|"]
    for label, epochs, phases in profiles:
        total = sum(phases.values())
        cells = [f"{phases[k]:.1f} ({100 * phases[k] / total:.0f}%)" if total else "–" for k, _ in PROFILE_PHASES]
        lines.append(f"| {label} | {epochs} | " + " | ".join(cells) + f" | {total:.1f} |")
    load = os.getloadavg()
    text = ["# Where an epoch's time goes (Market split, CPU)", "",
            "Written by `tools/benchmark_market_split.py` (`--assemble`) from the `time/<phase>` scalars every "
            "run keeps in metrics.json (one line per epoch in the log: `epoch N time: ...`), for the rows of "
            "[the Market-split table](../results/market1501-split.md).", "",
            "Commands: " + ", ".join(f"`{c}`" for c in commands) + "  ",
            f"Commit: {', '.join(sorted(commits))}  ", f"Machine: {'; '.join(sorted(machines))}  ",
            f"Load average when assembled: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (the runs' own "
            "wall times are in the Market-split table)", "",
            "Mean seconds per epoch (share of the epoch). features: the epoch-start embedding of every train "
            "image (DCMIP stage 2: the student's and the teacher's); kNN, Jaccard, DBSCAN: the clustering step "
            "(docs/clustering.md); training steps: UNSUP.ITERS steps with their data loading; evaluation and "
            "checkpoint: averaged over all epochs (evaluations run every TEST.EVAL_PERIOD epochs and at the end).",
            ""] + lines + [""]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(text) + "\n" + gpu_arithmetic())
    print(f"wrote {path} ({len(profiles)} rows)")


def assemble(protocol, out_root, doc, profile_doc=None):
    rows, dataset, default_out, default_doc = PROTOCOLS[protocol]
    doc_dir = os.path.dirname(os.path.abspath(doc))
    os.makedirs(doc_dir, exist_ok=True)
    stem = os.path.splitext(os.path.basename(doc))[0]
    lines, images, commits, machines, commands, extras = [], [], set(), set(), [], set()
    zero_shot_map = None
    profiles = []
    for row in rows:
        if not os.path.isfile(os.path.join(out_root, row, "row.json")):
            continue
        with open(os.path.join(out_root, row, "row.json")) as f:
            rec = json.load(f)
        cfg = load_cfg(rec["config"], rec["opts"])
        iters = cfg.UNSUP.ITERS
        rec, records, results = row_results(out_root, row, cfg.SOLVER.IMS_PER_BATCH, iters,
                                            cfg.UNSUP.DCMIP.STAGE1_EPOCHS if row in TWO_STAGE else None)
        if row == "zero-shot":
            zero_shot_map = results[0][1].get("mAP")
        commits.add(rec["commit"])
        command = rec.get("invocation", ".venv/bin/python tools/benchmark_market_split.py --rows " + row)
        if command not in commands:
            commands.append(command)
        extras.add(" ".join(rec.get("extra_opts", [])))
        machines.add(rec["machine"])
        stages = None
        if row in TWO_STAGE:
            boundary = cfg.UNSUP.DCMIP.STAGE1_EPOCHS * iters
            stages = [(f"{TWO_STAGE[row]} stage 1", 0, boundary), (f"{TWO_STAGE[row]} stage 2", boundary, float("inf"))]
        profiles += [(label or LABELS.get(row, row), n, phases) for label, n, phases in epoch_profile(records, stages)]
        # Camera-aware proxies per cluster at the last clustering: ~1 when clusters stay in one camera.
        ratio = last_value(records, "cluster/proxies_per_cluster")
        for label, m, ex in results:
            lines.append(f"| {label} | " + " | ".join(fmt(m.get(k)) for k in METRICS) + f" | {fmt(ratio, 2)}" +
                         f" | {fmt(ex['img_s'])} | {fmt(100 * ex['outside_share']) if ex.get('outside_share') is not None else '–'}"
                         f" | {ex['wall_s'] / 60:.1f} |" + (f" (rc {ex['rc']})" if ex["rc"] else ""))
        if row != "zero-shot":
            png = os.path.join(doc_dir, f"{stem}-{row}.png")
            ex = results[0][2]
            plot(records, iters, png, f"{LABELS.get(row, row)} on {dataset}: "
                 f"{fmt(ex['img_s'])} img/s training throughput (IMS_PER_BATCH / mean step time)", zero_shot_map,
                 student_maps(os.path.join(out_root, row, "log.txt"), records) if row in TWO_STAGE else ())
            images.append((row, os.path.basename(png)))
    title, setup = PROTOCOL_TEXT[protocol]
    text = [f"# {title}", "", setup, "",
            "Command" + ("s" if len(commands) > 1 else "") + ": " + ", ".join(f"`{c}`" for c in commands), "",
            ] + ([f"Config overrides for every row: `{', '.join(sorted(extras))}` (on top of each row's config)", ""]
                 if any(extras) else []) + [
            "Then `.venv/bin/python tools/benchmark_market_split.py --assemble"
            + (f" --protocol {protocol}" if protocol != "split" else "")
            + (f" --out {os.path.relpath(out_root, ROOT)}" if os.path.relpath(out_root, ROOT) != default_out else "")
            + (f" --doc {os.path.relpath(doc, ROOT)}" if os.path.relpath(doc, ROOT) != default_doc else "")
            + "` writes this file from the saved rows.", "",
            f"Commit: {', '.join(sorted(commits)) or '–'}  ", f"Machine: {'; '.join(sorted(machines)) or '–'}", "",
            "| Method | mAP | Rank-1 | Rank-5 | Rank-10 | proxies / cluster | train img/s | step time outside backbone (%) | wall (min) |",
            "|---|---|---|---|---|---|---|---|---|"] + lines + [""]
    text += ["Stage 1 (best) is the best stage-1 evaluation; stage 2 rows are the final evaluations. "
             "img/s = IMS_PER_BATCH / mean step time (metrics.json \"time\", data loading excluded); "
             "the outside-backbone share is 1 − (backbone-only forward+backward of a random batch) / step time. "
             "proxies / cluster: camera-aware proxies per cluster at the last clustering "
             "(cluster/proxies_per_cluster; 1.0 = every cluster inside one camera).", ""]
    analysis = os.path.join(doc_dir, f"{stem}-analysis.md")
    if os.path.isfile(analysis):
        text += [f"What the table shows and why: [{os.path.basename(analysis)}]({os.path.basename(analysis)}).", ""]
    for row, png in images:
        text += [f"![{row}]({png})", ""]
    with open(doc, "w") as f:
        f.write("\n".join(text))
    print(f"wrote {doc} ({len(lines)} rows, {len(images)} plots)")
    if profile_doc and profiles:
        write_epoch_profile(profiles, profile_doc, commands, machines, commits)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=list(PROTOCOLS), default="split",
                   help="split: MarketSplit (issue 6); two-camera: MarketSplitTwoCameras (issue 13); "
                   "demo-two-camera: DemoTwoCameras with the demo configs (issue 13)")
    p.add_argument("--rows", default=None, help="all, or a comma list of the protocol's rows: split "
                   + ",".join(ROWS) + "; two-camera " + ",".join(TWO_CAMERA_ROWS) + "; demo-two-camera "
                   + ",".join(DEMO_TWO_CAMERA_ROWS))
    p.add_argument("--assemble", action="store_true", help="only assemble the doc from saved rows")
    p.add_argument("--out", default=None, help="rows' output root (default output/market_split, two-camera: "
                   "output/two_camera)")
    p.add_argument("--doc", default=None, help="default docs/results/market1501-split.md (two-camera: "
                   "docs/results/market1501-two-camera.md)")
    p.add_argument("--profile-steps", type=int, default=10, help="backbone-only steps timed after each row (0: skip)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny budget (2 iterations, 1 epoch) to a temp output dir and temp doc, not docs/results")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="extra config overrides for every row")
    a = p.parse_args()
    table, _, default_out, default_doc = PROTOCOLS[a.protocol]
    if a.smoke:
        tmp = tempfile.mkdtemp(prefix="market_split_smoke_")
        a.out = a.out or os.path.join(tmp, "out")
        a.doc = a.doc or os.path.join(tmp, "docs", os.path.basename(default_doc))
        a.profile_steps = min(a.profile_steps, 2)
    out_root = os.path.abspath(a.out or os.path.join(ROOT, default_out))
    doc = a.doc or os.path.join(ROOT, default_doc)
    rc = 0
    if a.rows and not a.assemble:
        rows = list(table) if a.rows == "all" else a.rows.split(",")
        bad = [r for r in rows if r not in table]
        if bad:
            sys.exit(f"error: unknown rows {bad}; choose from {list(table)}")
        for r in rows:
            rc |= run_row(table, r, out_root, a.smoke, a.profile_steps, a.opts)
    profile_doc = None
    # epoch.md profiles the published table's rows: runs into another --out (e.g. another seed)
    # must not replace it.
    if a.protocol == "split" and (a.smoke or out_root == os.path.join(ROOT, default_out)):
        profile_doc = (os.path.join(os.path.dirname(doc), "epoch.md") if a.smoke
                       else os.path.join(ROOT, "docs", "benchmarks", "epoch.md"))
    assemble(a.protocol, out_root, doc, profile_doc)
    sys.exit(rc)


if __name__ == "__main__":
    main()
