"""Time one DCMIP stage-2 training step of the loss head: forward, backward, memory update.

Ours (``DiscrepantProxyMemory``, vectorised) against the per-image head of
``tests/naive_dcmip.py``, and against the floor of any implementation: the two bare matrix
products of the step, the logits ``f · [A; B; I]ᵀ`` (forward) and the input gradient
``g · [A; B; I]`` (backward), timed in the same run on a pre-concatenated memory.
Batch 256 from the camera-diverse sampler (16 clusters x 16), C = 700 clusters, 16 instances
per cluster (a 12,600-row memory), d = 2048 and d = 128, Market-1501's settings (τ 0.05, m 0.1,
r 0.2, sequential proxy-A update). Only the head is timed: the features are a leaf tensor, so
the backward pass is the head's. Ours and the bare products alternate step by step, so that
load from other processes affects both alike; each figure is a median.

    PYTHONPATH=projects/DCMIP python benchmarks/dcmip_head.py [--steps 20] [--naive-steps 2] [--threads 1 2]
        [--clock wall|cpu]

Prints a table and writes it to docs/benchmarks/dcmip_head.md (dcmip_head_cpu.md with --clock cpu).
"""
import argparse
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

import dcmip  # noqa: E402,F401
from dcmip.config import add_dcmip_config  # noqa: E402
from dcmip.memory import build_memory_head  # noqa: E402
from dcmip.sampling import build_sampler  # noqa: E402
from dcmip.structures import PseudoLabels  # noqa: E402
from fastreid.config import get_cfg  # noqa: E402
from naive_dcmip import NaiveDCMIPHead  # noqa: E402

NUM_CLUSTERS, IMAGES_PER_CLUSTER, NUM_CAMS = 700, 18, 6


def make_cfg():
    cfg = add_dcmip_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "DCMIP", "market.yml"))
    return cfg


def synthetic_pseudo_labels(dim: int, seed: int = 0) -> PseudoLabels:
    """C clusters of 18 images over 6 cameras, random student and teacher features."""
    n = NUM_CLUSTERS * IMAGES_PER_CLUSTER
    g = torch.Generator().manual_seed(seed)
    clusters = torch.arange(NUM_CLUSTERS).repeat_interleave(IMAGES_PER_CLUSTER)
    return PseudoLabels(features=F.normalize(torch.randn(n, dim, generator=g), dim=1), clusters=clusters,
                        cams=torch.randint(0, NUM_CAMS, (n,), generator=g), proxies=clusters,
                        indices=torch.arange(n), teacher_features=F.normalize(torch.randn(n, dim, generator=g), dim=1))


def make_batches(cfg, pseudo: PseudoLabels, count: int, dim: int):
    sampler = iter(build_sampler(cfg, pseudo, seed=0))
    batch_size, g = cfg.SOLVER.IMS_PER_BATCH, torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        rows = torch.tensor([next(sampler) for _ in range(batch_size)])
        batches.append({"clusters": pseudo.clusters[rows], "camids": pseudo.cams[rows], "index": rows,
                        "multiplicity": {"clusters": cfg.UNSUP.SAMPLER.NUM_INSTANCES},
                        "features": F.normalize(torch.randn(batch_size, dim, generator=g), dim=1)})
    return batches


# Wall time, or the process's CPU time: on a shared machine the latter leaves out the time
# other processes hold the cores (with one thread; with more it counts their waiting too).
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, clock) -> float:
    start = clock()
    fn()
    return clock() - start


def benchmark(dim: int, steps: int, naive_steps: int, clock, warmup: int = 2):
    cfg = make_cfg()
    pseudo = synthetic_pseudo_labels(dim)
    batches = make_batches(cfg, pseudo, warmup + steps, dim)
    ours = build_memory_head(cfg)
    ours.reset(pseudo)
    num_clusters = pseudo.num_clusters
    naive = NaiveDCMIPHead(ours.proxies[:num_clusters].clone(), ours.proxies[num_clusters:].clone(),
                           ours.instances.clone(), cfg.UNSUP.MEMORY.TEMP, cfg.UNSUP.DCMIP.MARGIN,
                           cfg.UNSUP.MEMORY.MOMENTUM, cfg.UNSUP.MEMORY.UPDATE)
    bank = torch.cat([ours.proxies, ours.instances])
    grad = torch.randn(cfg.SOLVER.IMS_PER_BATCH, bank.shape[0])

    def our_losses(batch):
        features = batch["features"].clone().requires_grad_()
        sum(ours(features, batch).values()).backward()
        return features.detach()

    def matmuls(batch):
        batch["features"] @ bank.t()
        grad @ bank

    def naive_step(batch):
        features = batch["features"].clone().requires_grad_()
        sum(naive.forward(features, batch["clusters"]).values()).backward()
        naive.update(features.detach(), batch["clusters"])

    # Ours: forward + backward, then the update, timed apart to show where the time goes. The
    # per-image head runs in the same loop over the first batches, so that all three see the
    # same load.
    times = {"loss": [], "update": [], "matmuls": [], "naive": []}
    for i, batch in enumerate(batches):
        if i <= naive_steps:
            t_naive = timed(lambda: naive_step(batch), clock)
            if i > 0:
                times["naive"].append(1e3 * t_naive)
        start = clock()
        features = our_losses(batch)
        middle = clock()
        ours.update(features, batch)
        end = clock()
        t_matmul = timed(lambda: matmuls(batch), clock)
        if i >= warmup:
            times["loss"].append(1e3 * (middle - start))
            times["update"].append(1e3 * (end - middle))
            times["matmuls"].append(1e3 * t_matmul)
    step_ms = [a + b for a, b in zip(times["loss"], times["update"])]
    return {"ours": float(np.median(step_ms)), **{k: float(np.median(v)) for k, v in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of ours and the bare products")
    parser.add_argument("--naive-steps", type=int, default=2, help="timed steps of the per-image head (< --steps)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch intra-op thread counts")
    parser.add_argument("--clock", choices=CLOCKS, default="wall", help="wall time or process CPU time")
    parser.add_argument("--output", help="default: docs/benchmarks/dcmip_head.md (wall clock) or "
                                         "dcmip_head_cpu.md (CPU clock)")
    args = parser.parse_args()
    output = args.output or os.path.join(ROOT, "docs", "benchmarks",
                                         "dcmip_head.md" if args.clock == "wall" else "dcmip_head_cpu.md")

    load_before = os.getloadavg()[0]
    table = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dim in (2048, 128):
            ms = benchmark(dim, args.steps, args.naive_steps, CLOCKS[args.clock])
            table.append([dim, threads, f"{ms['naive']:.0f}", f"{ms['ours']:.1f}", f"{ms['loss']:.1f}",
                          f"{ms['update']:.1f}", f"{ms['matmuls']:.1f}", f"{ms['naive'] / ms['ours']:.1f}x",
                          f"{ms['ours'] / ms['matmuls']:.2f}"])
            print(table[-1], flush=True)
    headers = ["d", "threads", "per-image head (ms/step)", "ours (ms/step)", "ours: losses fwd+bwd",
               "ours: updates", "bare products (ms)", "speed-up vs per-image", "ours / bare products"]
    text = tabulate(table, headers=headers, tablefmt="github")
    print(text)
    threads = " ".join(str(t) for t in args.threads)
    header = (f"# DCMIP head: time per training step\n\n"
              f"`python benchmarks/dcmip_head.py --steps {args.steps} --naive-steps {args.naive_steps} "
              f"--threads {threads} --clock {args.clock}`: {args.clock} time of the forward (L_cc + L_ins), "
              f"backward and memory updates (proxy A sequential, proxy B, instance replacement) of the "
              f"stage-2 head; batch 256 (16 clusters x 16), "
              f"C = {NUM_CLUSTERS}, 16 instances per cluster, float32, torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average "
              f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run. Medians over "
              f"{args.steps} steps (per-image head: {args.naive_steps}).\n"
              f"\"Bare products\" is the floor of any implementation: `f @ [A; B; I].T` plus `g @ [A; B; I]` "
              f"on a pre-concatenated memory, timed alternately with ours; ours is the sum of its losses' "
              f"forward + backward and its memory updates, timed step by step. The per-image head is "
              f"`tests/naive_dcmip.py` (Python loops over the images and clusters).\n\n")
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        f.write(header + text + "\n")


if __name__ == "__main__":
    main()
