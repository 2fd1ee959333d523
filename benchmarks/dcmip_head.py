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

    PYTHONPATH=projects/DCMIP python benchmarks/dcmip_head.py [--steps 20] [--naive-steps 2] [--repeats 1]
        [--threads 1] [--dims 2048 128] [--clock cpu|wall] [--label NAME] [--append]

Prints a table and writes it to docs/benchmarks/dcmip_head.md (--append: as one more section).
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
from dcmip.data.pseudo_dataset import group_batch  # noqa: E402
from dcmip.memory import build_memory_head  # noqa: E402
from dcmip.sampling import build_sampler  # noqa: E402
from dcmip.structures import PseudoLabels  # noqa: E402
from fastreid.config import get_cfg  # noqa: E402
from naive_dcmip import NaiveDCMIPHead  # noqa: E402
from op_count import count_aten_ops  # noqa: E402

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
        batch = {"clusters": pseudo.clusters[rows], "proxies": pseudo.proxies[rows], "camids": pseudo.cams[rows],
                 "index": rows, "features": F.normalize(torch.randn(batch_size, dim, generator=g), dim=1)}
        # What the training collation prepares on the host (collate_with_multiplicity).
        batches.append({**batch, "groups": group_batch(batch)})
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

    def our_step(batch):
        ours.update(our_losses(batch), batch)

    ops = count_aten_ops(our_step, batches[0])
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
    return {"ours": float(np.median(step_ms)), "ops": sum(ops.values()),
            **{k: float(np.median(v)) for k, v in times.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps of ours and the bare products")
    parser.add_argument("--naive-steps", type=int, default=2, help="timed steps of the per-image head (< --steps)")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per row; the table shows medians")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op thread counts")
    parser.add_argument("--dims", type=int, nargs="+", default=[2048, 128], help="embedding sizes d")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu",
                        help="wall: elapsed time; cpu: the process's CPU time, insensitive to other processes "
                             "on a shared machine (meaningful with one thread)")
    parser.add_argument("--label", default="", help="a name for this run's section, e.g. the commit measured")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks", "dcmip_head.md"))
    parser.add_argument("--append", action="store_true", help="add this run to the output file as a new section")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    table = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for dim in args.dims:
            runs = [benchmark(dim, args.steps, args.naive_steps, CLOCKS[args.clock]) for _ in range(args.repeats)]
            ms = {key: float(np.median([run[key] for run in runs])) for key in runs[0]}
            table.append([dim, threads, f"{ms['naive']:.0f}", f"{ms['ours']:.1f}", f"{ms['loss']:.1f}",
                          f"{ms['update']:.1f}", f"{ms['matmuls']:.1f}", f"{ms['naive'] / ms['ours']:.1f}x",
                          f"{ms['ours'] / ms['matmuls']:.2f}", f"{ms['ops']:.0f}"])
            print(table[-1], flush=True)
    headers = ["d", "threads", "per-image head (ms/step)", "ours (ms/step)", "ours: losses fwd+bwd",
               "ours: updates", "bare products (ms)", "speed-up vs per-image", "ours / bare products",
               "ATen ops per step (ours)"]
    text = tabulate(table, headers=headers, tablefmt="github")
    print(text)
    threads = " ".join(str(t) for t in args.threads)
    dims = " ".join(str(d) for d in args.dims)
    title = ("# DCMIP head: time per training step\n\n"
             "\"Bare products\" is the floor of any implementation that forms the logits densely: "
             "`f @ [A; B; I].T` plus `g @ [A; B; I]` on a pre-concatenated memory, timed alternately with "
             "ours; ours is the sum of its losses' forward + backward and its memory updates, timed step "
             "by step. The per-image head is `tests/naive_dcmip.py` (Python loops over the images and "
             "clusters). The ATen operators of one step (forward, backward, updates) are counted with a "
             "`TorchDispatchMode` (`benchmarks/op_count.py`); on a GPU each is a kernel launch.\n")
    header = (f"\n## {args.label + ': ' if args.label else ''}{args.clock} time, {threads} thread(s)\n\n"
              f"`python benchmarks/dcmip_head.py --steps {args.steps} --naive-steps {args.naive_steps} "
              f"--repeats {args.repeats} --threads {threads} --dims {dims} --clock {args.clock}`: "
              f"{args.clock} time of the forward (L_cc + L_ins), "
              f"backward and memory updates (proxy A sequential, proxy B, instance replacement) of the "
              f"stage-2 head; batch 256 (16 clusters x 16), "
              f"C = {NUM_CLUSTERS}, 16 instances per cluster, float32, torch {torch.__version__}, "
              f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
              f"{time.strftime('%Y-%m-%d %H:%M')}, load average "
              f"{load_before:.1f} before and {os.getloadavg()[0]:.1f} after the run. Medians over "
              f"{args.steps} steps (per-image head: {args.naive_steps}), then over {args.repeats} "
              f"measurement(s).\n\n")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "a" if args.append else "w") as f:
        f.write(("" if args.append else title) + header + text + "\n")


if __name__ == "__main__":
    main()
