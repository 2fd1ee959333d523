#!/usr/bin/env python
"""make gpu-check: the CUDA code paths against the CPU, on one GPU in a few minutes.

1. Every memory head (Cluster Contrast sequential / hardest, O2CAP's losses, DCMIP stage 1 and
   2): the same pseudo labels, memory and batch on CUDA and on the CPU; the losses, the
   gradients of the features and the memories after the update must agree, in fp32 within
   1e-4 and under autocast (fp16 on CUDA, the trainer's mixed precision) within the
   tolerances of ``AMP_TOL``. DCMIP's instance memory is drawn from each device's own
   generator, so it is copied from the CPU after the reset and left out after the update.
2. Clustering (Jaccard + DBSCAN) of CUDA features gives the CPU's labels.
3. The rates an epoch is made of: the published configs' ResNet-50 at 256×128 embedding
   images in eval mode and training (forward + backward) under autocast at batch 256 and in
   fp32 at batch 32, and the kNN's blocked matrix product in TFLOP/s. They are stored in
   ``docs/benchmarks/gpu_rates.json``, from which docs/benchmarks/epoch.md's GPU arithmetic is
   computed.
4. DCMIP with mixed precision through both stages on the demo data (``tools/demo.py``):
   finite losses (the trainer stops on a non-finite one) and mAP after > before; O2CAP's demo
   config (6 epochs) likewise.

Prints one table and writes it to ``docs/benchmarks/gpu_check.md``. Without a CUDA device it
says so and exits 0. The comparison functions take any two devices, so the tests run them
CPU against CPU.
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
from typing import Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dcmip  # noqa: E402,F401
from dcmip.clustering import camera_aware_proxies, cluster_features  # noqa: E402
from dcmip.config import add_dcmip_config  # noqa: E402
from dcmip.data.pseudo_dataset import group_batch  # noqa: E402
from dcmip.memory import build_memory_head  # noqa: E402
from dcmip.sampling import build_sampler  # noqa: E402
from dcmip.structures import PseudoLabels  # noqa: E402
from dcmip import provenance  # noqa: E402
from fastreid.config import get_cfg  # noqa: E402

FP32_TOL = 1e-4
# Under autocast the logits f.M^T are fp16 products (about 3 significant digits) divided by
# tau = 0.05-0.07, so losses and gradients may differ by ~1e-2 relative; the memory update runs
# outside autocast in fp32 on fp32 features, as in the trainer.
AMP_TOL = {"loss": 2e-2, "grad": 2e-2, "reset": FP32_TOL, "memory": FP32_TOL}
# Buffers filled from a device's own random generator (DCMIP's multi-instance proxies).
RANDOM_BUFFERS = ("instance_buffer",)

HEADS = {  # name -> (UNSUP.MEMORY.NAME, UPDATE, O2CAP.LOSSES, sampler, stage 2)
    "Cluster Contrast, sequential": ("ClusterMemory", "sequential", None, "RandomMultipleGallerySampler", False),
    "Cluster Contrast, hardest": ("ClusterMemory", "hardest", None, "RandomMultipleGallerySampler", False),
    "O2CAP L_off + L_on": ("CameraAwareProxyMemory", "sequential", ("offline", "online"), "ProxyBalancedSampler", False),
    "O2CAP L_intra + L_merge": ("CameraAwareProxyMemory", "sequential", ("intra", "merge"), "ProxyBalancedSampler", False),
    "O2CAP L_base + L_base2": ("CameraAwareProxyMemory", "sequential", ("base", "base2"), "ClusterBalancedSampler", False),
    "DCMIP stage 1": ("DiscrepantProxyMemory", "sequential", None, "RandomMultipleGallerySampler", False),
    "DCMIP stage 2": ("DiscrepantProxyMemory", "sequential", None, "RandomMultipleGallerySampler", True),
}


def head_cfg(name: str, batch: int = 64, instances: int = 8):
    memory, update, losses, sampler, _ = HEADS[name]
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.UNSUP.MEMORY.NAME = memory
    cfg.UNSUP.MEMORY.UPDATE = update
    if memory == "CameraAwareProxyMemory":
        cfg.UNSUP.MEMORY.TEMP, cfg.UNSUP.MEMORY.MOMENTUM = 0.07, 0.2
        cfg.UNSUP.O2CAP.LOSSES = losses
        cfg.UNSUP.O2CAP.HARD_NEGATIVES = 20
    cfg.UNSUP.SAMPLER.NAME = sampler
    cfg.UNSUP.SAMPLER.NUM_INSTANCES = instances
    cfg.SOLVER.IMS_PER_BATCH = batch
    return cfg


def synthetic_pseudo(n: int = 600, dim: int = 256, clusters: int = 40, cams: int = 6, teacher: bool = False,
                     seed: int = 0) -> PseudoLabels:
    """Pseudo labels of ``n`` images with identity-structured, L2-normalised features."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % clusters
    cam = torch.randint(0, cams, (n,), generator=g)
    centers = torch.randn(clusters, dim, generator=g)

    def features():
        return torch.nn.functional.normalize(centers[labels] + 2.0 * torch.randn(n, dim, generator=g), dim=1)

    proxies = torch.as_tensor(camera_aware_proxies(labels.numpy(), cam.numpy())).long()
    return PseudoLabels(features=features(), clusters=labels, cams=cam, proxies=proxies, indices=torch.arange(n),
                        teacher_features=features() if teacher else None, epoch=1)


def _on(pseudo: PseudoLabels, device) -> PseudoLabels:
    move = (lambda t: None if t is None else t.to(device))
    return PseudoLabels(features=move(pseudo.features), clusters=move(pseudo.clusters), cams=move(pseudo.cams),
                        proxies=move(pseudo.proxies), indices=move(pseudo.indices),
                        teacher_features=move(pseudo.teacher_features), true_ids=move(pseudo.true_ids),
                        epoch=pseudo.epoch)


def _max_diff(a: torch.Tensor, b: torch.Tensor, relative: bool = False) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return float("inf")
    diff = (a - b).abs()
    if relative:
        diff = diff / b.abs().clamp_min(1.0)
    return float(diff.max()) if diff.numel() else 0.0


def _buffers(head) -> Dict[str, torch.Tensor]:
    return {name: b for name, b in head.named_buffers() if b.is_floating_point()}


def compare_head(name: str, device: str, reference: str = "cpu", amp: bool = False) -> Dict[str, float]:
    """Largest differences between ``name``'s head on ``device`` and on ``reference``: after
    the reset ("reset", deterministic buffers), of the losses ("loss", relative), of the
    feature gradients ("grad", relative) and of the memories after the update ("memory").
    ``amp`` runs ``device``'s side under autocast (fp16 on CUDA, bf16 on the CPU)."""
    cfg = head_cfg(name)
    pseudo = synthetic_pseudo(teacher=HEADS[name][4])
    rows = torch.tensor(next(iter(build_sampler(cfg, pseudo, seed=0).global_batches())))
    x = torch.nn.functional.normalize(pseudo.features[rows] + 0.3 * torch.randn(
        len(rows), pseudo.features.shape[1], generator=torch.Generator().manual_seed(1)), dim=1)
    labels = {"clusters": pseudo.clusters[rows], "proxies": pseudo.proxies[rows], "camids": pseudo.cams[rows],
              "index": rows}
    groups = group_batch(labels)  # the collation's host-side grouping, as in training
    out, heads, results = {}, {}, {}
    for side, dev in (("ref", reference), ("dev", device)):
        head = build_memory_head(cfg).to(dev)
        head.reset(_on(pseudo, dev))
        heads[side] = head
    ref, dev_head = heads["ref"], heads["dev"]
    reset = [_max_diff(b, _buffers(ref)[n]) for n, b in _buffers(dev_head).items() if n not in RANDOM_BUFFERS]
    out["reset"] = max(reset, default=0.0)
    for n, b in _buffers(dev_head).items():
        if n in RANDOM_BUFFERS:
            b.copy_(_buffers(ref)[n])
    for side, dev in (("ref", reference), ("dev", device)):
        head = heads[side]
        batch = {**{k: v.to(dev) for k, v in labels.items()},
                 "multiplicity": {k: groups[k].rounds for k in ("clusters", "proxies")},
                 "groups": {k: g.to(dev) for k, g in groups.items()}}
        features = x.to(dev, copy=True).requires_grad_()  # a leaf of its own, even on the same device
        use_amp = amp and side == "dev"
        dtype = torch.float16 if torch.device(dev).type == "cuda" else torch.bfloat16
        with torch.autocast(torch.device(dev).type, dtype=dtype, enabled=use_amp):
            losses = head(features.float(), batch)
        sum(losses.values()).backward()
        head.update(features.detach().float(), batch)
        results[side] = (losses, features.grad)
    (ref_losses, ref_grad), (dev_losses, dev_grad) = results["ref"], results["dev"]
    out["loss"] = max(_max_diff(dev_losses[k].float(), ref_losses[k], relative=True) for k in ref_losses)
    out["grad"] = _max_diff(dev_grad, ref_grad, relative=True)
    out["memory"] = max((_max_diff(b, _buffers(ref)[n]) for n, b in _buffers(dev_head).items()
                         if not (HEADS[name][4] and n in RANDOM_BUFFERS)), default=0.0)
    finite = all(torch.isfinite(v).all() for v in dev_losses.values()) and bool(torch.isfinite(dev_grad).all())
    out["finite"] = 1.0 if finite else 0.0
    return out


def compare_clustering(device: str, reference: str = "cpu", n: int = 2000) -> Dict[str, float]:
    """Labels of the same features clustered from ``device`` and from ``reference``."""
    from sklearn.metrics import adjusted_rand_score

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((n // 20, 64))
    ids = rng.integers(0, len(centers), n)
    x = centers[ids] / 8 + rng.uniform(0.5, 1.0, (n, 1)) * rng.standard_normal((n, 64)) / 8
    x = torch.nn.functional.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)
    a = cluster_features(x.to(device), k1=20, k2=6, eps=0.5)
    b = cluster_features(x.to(reference), k1=20, k2=6, eps=0.5)
    return {"identical": float(np.array_equal(a, b)), "ari": float(adjusted_rand_score(b, a)),
            "clusters": float(len(set(b.tolist()) - {-1}))}


def run_demo(config: str, opts: List[str], timeout: int) -> Dict[str, object]:
    """``tools/demo.py`` on the demo data: initial and final mAP, exit code, seconds."""
    start = time.time()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "demo.py"), "--config-file",
                           os.path.join(ROOT, config), *opts], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    found = re.search(r"mAP ([\d.]+)% -> ([\d.]+)%", proc.stdout)
    return {"returncode": proc.returncode, "seconds": time.time() - start,
            "before": float(found.group(1)) if found else float("nan"),
            "after": float(found.group(2)) if found else float("nan"),
            "tail": (proc.stdout + proc.stderr)[-2000:]}


def head_rows(device: str, reference: str = "cpu") -> List[List[str]]:
    rows = []
    for name in HEADS:
        for amp in (False, True):
            tol = AMP_TOL if amp else dict.fromkeys(("loss", "grad", "reset", "memory"), FP32_TOL)
            limits = ", ".join(f"{k} {tol[k]:.0e}" for k in ("reset", "loss", "grad", "memory"))
            label = f"{name} ({'autocast' if amp else 'fp32'})"
            try:
                diffs = compare_head(name, device, reference, amp=amp)
            except RuntimeError as e:  # e.g. a dtype mismatch in a backward under autocast
                rows.append([label, f"error: {str(e).splitlines()[0][:120]}", limits, "FAIL"])
                continue
            ok = diffs["finite"] == 1.0 and all(diffs[k] <= tol[k] for k in tol)
            measured = ", ".join(f"{k} {diffs[k]:.1e}" for k in ("reset", "loss", "grad", "memory"))
            rows.append([label, measured + ("" if diffs["finite"] else ", NOT FINITE"), limits, "pass" if ok else "FAIL"])
    return rows


def training_rows(device: str, timeout: int) -> List[List[str]]:
    rows = []
    with tempfile.TemporaryDirectory() as out:
        runs = {
            "DCMIP, mixed precision, stages 1 and 2 (demo data)": (
                "configs/DCMIP/demo_cpu.yml", ["MODEL.DEVICE", device, "SOLVER.AMP.ENABLED", "True",
                                               "OUTPUT_DIR", os.path.join(out, "dcmip")]),
            # The whole demo schedule: its first 2 epochs are the LR warm-up, and a run cut there
            # ends below the ImageNet start on the CPU too (16.5 -> 11.8 mAP, session 6).
            "O2CAP, the demo config's 6 epochs (demo data)": (
                "configs/O2CAP/demo_cpu.yml", ["MODEL.DEVICE", device, "OUTPUT_DIR", os.path.join(out, "o2cap")]),
        }
        for name, (config, opts) in runs.items():
            r = run_demo(config, opts, timeout)
            ok = r["returncode"] == 0 and r["after"] > r["before"]
            if not ok:
                print(f"---- {name} ----\n{r['tail']}")
            rows.append([name, f"mAP {r['before']:.1f} -> {r['after']:.1f}, exit {r['returncode']}, {r['seconds']:.0f} s",
                         "finite losses, mAP after > before", "pass" if ok else "FAIL"])
    return rows


def measure_rates(device: str, batch: int = 256, size=(256, 128), knn_n: int = 32768, dim: int = 2048,
                  repeats: int = 5, fp32_batch: int = 32) -> Dict[str, float]:
    """Images per second of the published configs' backbone (fastreid's ResNet-50, last stride
    1) embedding under autocast (eval) and training (forward + backward, train mode) at batch
    ``batch`` (DCMIP's configs: 256, mixed precision), training in fp32 at ``fp32_batch`` (O2CAP's
    configs: 32, no AMP), and the TFLOP/s of the kNN's (knn_n x dim) @ (dim x knn_n) product in
    fp32 and fp16. Synthetic inputs, no data loading: these are the GPU's ceilings, the loader
    may bound the real rates."""
    from fastreid.modeling.backbones import build_backbone

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.DEPTH = "build_resnet_backbone", "50x"
    cfg.MODEL.BACKBONE.LAST_STRIDE, cfg.MODEL.BACKBONE.PRETRAIN = 1, False
    model = build_backbone(cfg).to(device)
    x = torch.randn(batch, 3, *size, device=device)
    amp_dtype = torch.float16 if device.startswith("cuda") else torch.bfloat16

    def rate(fn, work):
        fn()  # warm-up (cuDNN autotuning, allocator)
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync(device)
        return work * repeats / (time.perf_counter() - start)

    def embed():
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp_dtype):
            model(x)

    def train():
        with torch.autocast(device.split(":")[0], dtype=amp_dtype):
            loss = model(x).float().pow(2).mean()
        loss.backward()

    def train_fp32():
        model(x_small).pow(2).mean().backward()

    out = {}
    model.eval()
    out["embed_img_s"] = rate(embed, batch)
    model.train()
    out["train_img_s"] = rate(train, batch)
    x_small = x[:fp32_batch]
    out["train_fp32_img_s"] = rate(train_fp32, len(x_small))
    del model, x, x_small
    for name, dtype in (("fp32", torch.float32), ("fp16", torch.float16 if device.startswith("cuda") else torch.bfloat16)):
        a = torch.randn(knn_n, dim, device=device, dtype=dtype)
        out[f"knn_tflops_{name}"] = rate(lambda: a @ a.T, 2 * knn_n * knn_n * dim) / 1e12
        del a
    return out


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def rate_rows(r: Dict[str, float]) -> List[List[str]]:
    return [["ResNet-50 256×128 embedding (eval, autocast, batch 256)", f"{r['embed_img_s']:,.0f} img/s",
             "measured (docs/benchmarks/epoch.md)", "measured"],
            ["ResNet-50 256×128 training (forward + backward, autocast, batch 256)", f"{r['train_img_s']:,.0f} img/s",
             "measured (docs/benchmarks/epoch.md)", "measured"],
            ["ResNet-50 256×128 training (forward + backward, fp32, batch 32)", f"{r['train_fp32_img_s']:,.0f} img/s",
             "measured (docs/benchmarks/epoch.md)", "measured"],
            ["kNN matrix product 32,768² × 2,048", f"fp32 {r['knn_tflops_fp32']:.1f}, fp16 {r['knn_tflops_fp16']:.1f} TFLOP/s",
             "measured (docs/clustering.md)", "measured"]]


def write_rates(rates: Dict[str, float], path: str, device_name: str, commit: str) -> None:
    """The measured rates as JSON, read by the GPU arithmetic of docs/benchmarks/epoch.md
    (tools/benchmark_market_split.py --assemble) and docs/clustering.md."""
    record = {"device": device_name, "torch": torch.__version__, "commit": commit,
              "date": time.strftime("%Y-%m-%d"), "rates": {k: round(float(v), 3) for k, v in rates.items()}}
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")


def render(rows: List[List[str]], header: str) -> str:
    from tabulate import tabulate

    return header + tabulate(rows, headers=["check", "measured", "tolerance / criterion", "result"],
                             tablefmt="github") + "\n"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="device to check against the CPU (default cuda)")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks", "gpu_check.md"))
    parser.add_argument("--rates", default=os.path.join(ROOT, "docs", "benchmarks", "gpu_rates.json"),
                        help="where the measured rates are stored for the GPU arithmetic (epoch.md)")
    parser.add_argument("--skip-training", action="store_true", help="only the head and clustering checks")
    parser.add_argument("--timeout", type=int, default=210, help="seconds allowed per training run (two runs: the whole check stays under 8 min)")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA device visible to torch; nothing to check (skipped).")
        return 0
    start = time.time()
    rows = head_rows(args.device)
    c = compare_clustering(args.device)
    rows.append([f"clustering of {args.device} features vs CPU", f"identical labels {bool(c['identical'])}, "
                 f"ARI {c['ari']:.4f}, {int(c['clusters'])} clusters", "identical labels",
                 "pass" if c["identical"] else "FAIL"])
    rates = measure_rates(args.device)
    rows += rate_rows(rates)
    if not args.skip_training:
        rows += training_rows(args.device, args.timeout)
    name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else platform.processor()
    commit = provenance.commit()
    os.makedirs(os.path.dirname(args.rates) or ".", exist_ok=True)
    write_rates(rates, args.rates, name, commit)
    header = (f"# GPU check\n\n`make gpu-check` (`python tools/gpu_check.py`) at commit {commit}: {args.device} "
              f"({name}) against the CPU, torch {torch.__version__}, {time.time() - start:.0f} s, load average "
              f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}.\n\n")
    text = render(rows, header)
    print(text)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        f.write(text)
    return 0 if all(row[-1] in ("pass", "measured") for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
