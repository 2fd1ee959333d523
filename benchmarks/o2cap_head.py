"""Time one O2CAP training step of the loss head: forward, backward, memory update.

Ours (``CameraAwareProxyMemory``, vectorised) against the per-image head of
``tests/naive_o2cap.py``, the stand-in for the authors' head: it loops over the images in
Python the way their code does, and against the floor of any implementation that forms the
scores densely: the bare products ``f K'^T`` and ``g K'`` at the same shapes. Batch 32 from the
proxy-balanced sampler (8 proxies x 4), Z = 4,024 camera-aware proxies over 6 cameras
(Market-1501-like), d = 2048 (the GPU configs), 1280 (the CPU configs) and 128. Only the head
is timed: the features come from a leaf tensor through the L2 normalisation, so the backward
pass is the head's. The ATen operators of one step are counted with a ``TorchDispatchMode``
(``benchmarks/op_count.py``). Every cold call follows the CPU configs' backbone (MobileNetV2 at
128 x 64) forward and backward pass on 2 images, as a head step follows the backbone's in
training; for scale, the same run times that pass on a batch of the same size.

    PYTHONPATH=projects/DCMIP python benchmarks/o2cap_head.py [--steps 20] [--repeats 1] [--threads 1]
        [--clock cpu|wall] [--rows O2CAP O2CAP1 CAP] [--dims 2048 1280 128] [--predecessor backbone|none]
        [--label NAME] [--append] [--parts] [--baseline CHECKOUT]

Prints a table and writes it to docs/benchmarks/o2cap_head.md (--append: as one more section).
"""
import argparse
import importlib
import os
import platform
import subprocess
import sys
import time
import types

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
from dcmip.modeling.normalize import l2_normalize  # noqa: E402
from dcmip.sampling import build_sampler  # noqa: E402
from dcmip.structures import PseudoLabels  # noqa: E402
from fastreid.config import get_cfg  # noqa: E402
from fastreid.modeling.backbones import build_backbone  # noqa: E402
from naive_o2cap import NaiveO2CAPHead  # noqa: E402
from op_count import count_aten_ops  # noqa: E402

NUM_PROXIES, NUM_CAMS, IMAGES_PER_PROXY, BATCH = 4024, 6, 3, 32
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
READING = """The per-image head is `tests/naive_o2cap.py`: the spec implemented with a Python loop over
the images (index lists, sorts, one image at a time), as the authors' code does, but with the
scores computed by one matmul per camera group. The floor is the pair of bare products any
implementation that forms the (B, Z) scores needs, `f @ K'.T` and `g @ K'` (the input gradient).
The per-image head, ours and the floor alternate batch by batch, so that load changes on a
shared machine hit them alike, and each is timed in two regimes that treat them the same:
cold, right after what precedes a head step in training, the backbone's forward and backward
pass (the CPU configs' MobileNetV2 on 2 images), and a 64 MiB write (more than the 32 MiB
last-level cache, so the data caches are cold whatever the pass left); and warm, on its second
run in a row. The backbone pass is there for the instruction side (instruction and
decoded-instruction caches, branch predictors), which the write leaves alone: without it
(`--predecessor none`) each function inherits the state of the one timed before it, here ours
the per-image head's long Python loop and the floor ours, whose own product has just run the
same matrix-product code. "ours / floor" is the ratio of their medians in the same run, with
the range of the single measurements' ratios in brackets when there are several. The
ATen operators of one step of ours (forward, backward, memory update, and the L2 normalisation
in front) are counted with a `TorchDispatchMode` (`benchmarks/op_count.py`) on a step after
the first: on a GPU each one is a kernel launch. "ours / backbone step" puts the head's cold
step beside the forward and backward pass of the CPU configs' backbone (MobileNetV2, 128 x 64,
random weights, training mode) on a batch of the same size, timed in the same run: what the
rest of a training step costs on this machine.

The batches carry what the training collation prepares on the host
(`collate_with_multiplicity`): the batch grouped by cluster, proxy and camera (`LabelGroups`:
the rounds of the sequential update, the distinct proxies whose rows form the proxy half of
Eq. 5's balanced similarity, the per-camera weights of the reduction).
"""
# (Table II row, losses) timed at each size; O2CAP is the method, the others add loss terms.
ROWS = (("O2CAP", ("offline", "online")), ("O2CAP1", ("intra", "offline", "online")),
        ("CAP", ("intra", "offline")))


def synthetic_pseudo_labels(dim: int, seed: int = 0) -> PseudoLabels:
    """Clusters spanning 1-6 random cameras until there are exactly NUM_PROXIES proxies."""
    rng = np.random.default_rng(seed)
    proxy_cluster, proxy_cam = [], []
    cluster = 0
    while len(proxy_cam) < NUM_PROXIES:
        cams = rng.choice(NUM_CAMS, size=rng.integers(1, NUM_CAMS + 1), replace=False)
        cams = cams[:NUM_PROXIES - len(proxy_cam)]
        proxy_cam.extend(cams.tolist())
        proxy_cluster.extend([cluster] * len(cams))
        cluster += 1
    proxies = torch.arange(NUM_PROXIES).repeat_interleave(IMAGES_PER_PROXY)
    g = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(len(proxies), dim, generator=g), dim=1)
    return PseudoLabels(features=features, clusters=torch.tensor(proxy_cluster)[proxies],
                        cams=torch.tensor(proxy_cam)[proxies], proxies=proxies,
                        indices=torch.arange(len(proxies)), true_ids=torch.tensor(proxy_cluster)[proxies])


def make_cfg(losses):
    cfg = add_dcmip_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "O2CAP", "market.yml"))
    cfg.UNSUP.O2CAP.LOSSES = losses
    return cfg


#: Written before every cold-cache timing: more than the last-level cache of the CPUs we
#: measure on (32 MiB here), as a backbone pass between two head steps does.
FLUSH_MIB = 64


def time_steps(steps, batches, clock, warmup: int = 3, returns: bool = False, alternate: bool = False,
               before=None):
    """Per step function, its times in ms over ``batches`` after ``warmup`` untimed steps, in
    two regimes: ``cold``, each call timed right after ``before()`` (a backbone pass, what
    precedes the head in training) and the write of a buffer larger than the last-level cache,
    and ``warm``, each call timed on its second run in a row. The functions alternate batch by
    batch, so that a load change on a shared machine hits them alike, and each regime treats
    them the same: no function inherits a cache warmed by another. The write evicts the data
    caches, not the instruction side (instruction caches, branch predictors), so without
    ``before`` what ran just before a function still changes its time. With ``returns``, what
    each timed call returns is kept instead of its time. With ``alternate``, every other batch
    runs the functions in reverse order, so that none of them always follows the same one."""
    flush = torch.zeros(FLUSH_MIB * 2 ** 20 // 4)
    times = {regime: [[] for _ in steps] for regime in ("cold", "warm")}
    for i, batch in enumerate(batches):
        order = list(zip(steps, times["cold"], times["warm"]))
        for step, cold, warm in (order[::-1] if alternate and i % 2 else order):
            if before is not None:
                before()
            flush.add_(1.0)
            start = clock()
            first = step(batch)
            elapsed = clock() - start
            start = clock()
            second = step(batch)
            if i >= warmup:
                cold.append(first if returns else 1e3 * elapsed)
                warm.append(second if returns else 1e3 * (clock() - start))
    return times


def make_batches(cfg, pseudo: PseudoLabels, count: int, dim: int):
    sampler = iter(build_sampler(cfg, pseudo, seed=0))
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(count):
        rows = torch.tensor([next(sampler) for _ in range(BATCH)])
        batch = {"clusters": pseudo.clusters[rows], "proxies": pseudo.proxies[rows], "camids": pseudo.cams[rows],
                 "index": rows, "raw": torch.randn(BATCH, dim, generator=g)}
        # What the training collation prepares on the host (collate_with_multiplicity).
        batches.append({**batch, "groups": group_batch(batch)})
    return batches


def benchmark(dim: int, losses, steps: int, clock, before=None):
    """Times of the per-image head, ours and the floor, and the number of ATen operators one
    step of ours dispatches."""
    pseudo = synthetic_pseudo_labels(dim)
    cfg = make_cfg(losses)
    batches = make_batches(cfg, pseudo, steps + 3, dim)
    ours = build_memory_head(cfg)
    ours.reset(pseudo)
    our_step = head_step(ours)

    o2cap = cfg.UNSUP.O2CAP
    naive = NaiveO2CAPHead(losses, temp=cfg.UNSUP.MEMORY.TEMP, momentum=cfg.UNSUP.MEMORY.MOMENTUM,
                           k1=o2cap.HARD_NEGATIVES, k2=o2cap.ONLINE_POSITIVES,
                           weight=o2cap.BALANCE_WEIGHT, negatives=o2cap.ONLINE_NEGATIVES,
                           baseline_reduction=o2cap.BASELINE_REDUCTION)
    naive.reset(pseudo.features, pseudo.clusters, pseudo.proxies, pseudo.cams)

    def naive_step(batch):
        raw = batch["raw"].clone().requires_grad_()
        features = F.normalize(raw, dim=1)
        sum(naive.forward(features, batch["clusters"], batch["proxies"], batch["camids"]).values()).backward()
        naive.update(features.detach(), batch["clusters"], batch["proxies"])

    # The floor of any implementation: the scores f K'^T and the input gradient g K', bare.
    memory = ours.proxy_memory if ours.uses_proxies else ours.cluster_memory
    grad = torch.randn(BATCH, memory.shape[0], generator=torch.Generator().manual_seed(2))

    def floor(batch):
        batch["raw"] @ memory.t()
        grad @ memory

    # Counted on the second step: the first also builds the head's cached constants.
    our_step(batches[0])
    ops = sum(count_aten_ops(our_step, batches[1]).values())
    return time_steps((naive_step, our_step, floor), batches, clock, before=before), ops


#: Images of the backbone pass that precedes every cold call: the same code as a training
#: step's pass (which evicts the instruction side as it does), at a small cost per call.
PREDECESSOR_IMAGES = 2


def cpu_backbone():
    """The CPU configs' backbone (MobileNetV2, random weights: they do not change the time) in
    training mode, and a function that runs its forward and backward pass on ``n`` images."""
    cfg = add_dcmip_config(get_cfg())
    cfg.merge_from_file(os.path.join(ROOT, "configs", "O2CAP", "market_split_cpu.yml"))
    cfg.MODEL.BACKBONE.PRETRAIN = False
    backbone = build_backbone(cfg).train()

    def make_pass(n: int):
        images = torch.randn(n, 3, *cfg.INPUT.SIZE_TRAIN, generator=torch.Generator().manual_seed(3))

        def backbone_pass():
            backbone.zero_grad(set_to_none=True)
            backbone(images).mean(dim=(2, 3)).sum().backward()
        return backbone_pass
    return make_pass


def backbone_step_ms(make_pass, steps: int, clock, warmup: int = 3) -> float:
    """The median time (ms) of the backbone's forward and backward pass on a batch of
    ``BATCH`` images: the part of a training step that is not the head."""
    backbone_pass = make_pass(BATCH)
    times = []
    for i in range(warmup + steps):
        start = clock()
        backbone_pass()
        if i >= warmup:
            times.append(1e3 * (clock() - start))
    return float(np.median(times))


def head_step(head):
    """One training step of a memory head: forward, backward and update, with the model's L2
    normalisation (dcmip.modeling.normalize) in front, from a leaf tensor."""
    def step(batch):
        raw = batch["raw"].clone().requires_grad_()
        features = l2_normalize(raw)
        sum(head(features, batch).values()).backward()
        head.update(features.detach(), batch)
    return step


def load_baseline(checkout: str):
    """The memory package of another checkout (e.g. a ``git worktree`` of an earlier commit),
    imported as ``dcmip_baseline`` beside this one. Its package ``__init__`` is not run: it
    would register the plugin's fastreid components a second time. Its heads must read the
    batch keys this script's batches carry."""
    root = os.path.join(os.path.abspath(checkout), "projects", "DCMIP", "dcmip")
    if not os.path.isfile(os.path.join(root, "memory", "__init__.py")):
        sys.exit(f"--baseline {checkout}: no projects/DCMIP/dcmip/memory package there; give the root "
                 "of a checkout, e.g. one made with `git worktree add /tmp/baseline <commit>`")
    package = types.ModuleType("dcmip_baseline")
    package.__path__ = [root]
    sys.modules["dcmip_baseline"] = package
    return importlib.import_module("dcmip_baseline.memory")


def side_by_side(dim: int, losses, steps: int, clock, baseline, before=None):
    """Times of the baseline's head and ours on the same batches, in one process, the two
    alternating batch by batch and swapping order every other batch (``time_steps``'
    ``alternate``), and each head's ATen operators per step."""
    pseudo = synthetic_pseudo_labels(dim)
    cfg = make_cfg(losses)
    batches = make_batches(cfg, pseudo, steps + 3, dim)
    heads = [baseline.build_memory_head(cfg), build_memory_head(cfg)]
    step_fns = []
    for head in heads:
        head.reset(pseudo)
        step_fns.append(head_step(head))
        step_fns[-1](batches[0])
    ops = [sum(count_aten_ops(fn, batches[1]).values()) for fn in step_fns]
    return time_steps(tuple(step_fns), batches, clock, alternate=True, before=before), ops


#: The parts of ours timed by --parts: the functions the head calls, by name in its module.
PARTS = ("distinct_proxy_queries", "memory_scores", "top_columns", "balanced_similarity", "offline_positives",
         "online_positives", "contrastive_terms", "batch_momentum_update_")


def part_times(dim: int, losses, steps: int, clock, before=None):
    """regime -> part -> ms: ours, timed part by part inside its step (the head module's
    functions wrapped in timers; "backward" and "normalisation" around them), cold and warm as
    in :func:`time_steps`."""
    import dcmip.memory.o2cap.head as head_module

    pseudo = synthetic_pseudo_labels(dim)
    cfg = make_cfg(losses)
    batches = make_batches(cfg, pseudo, steps + 3, dim)
    ours = build_memory_head(cfg)
    ours.reset(pseudo)
    record = {}

    def timed(name, fn):
        def wrapper(*args, **kwargs):
            start = clock()
            result = fn(*args, **kwargs)
            record[name] = record.get(name, 0.0) + clock() - start
            return result
        return wrapper

    originals = {name: getattr(head_module, name) for name in PARTS}

    def our_step(batch):
        start = clock()
        features = l2_normalize(batch["raw"].clone().requires_grad_())
        record["normalisation"] = clock() - start
        losses = ours(features, batch)
        start = clock()
        sum(losses.values()).backward()
        record["backward"] = clock() - start
        ours.update(features.detach(), batch)

    def whole(batch):
        record.clear()
        start = clock()
        our_step(batch)
        record["whole step"] = clock() - start
        return dict(record)

    for name in PARTS:
        setattr(head_module, name, timed(name, originals[name]))
    try:
        times = time_steps((whole,), batches, clock, returns=True, before=before)
    finally:
        for name, fn in originals.items():
            setattr(head_module, name, fn)
    return {regime: {part: 1e3 * float(np.median([step[part] for step in runs[0]])) for part in runs[0][0]}
            for regime, runs in times.items()}


def median_ms(runs, regime: str, function: int) -> float:
    """One timed function's time in a regime: the median over the steps of each repeat, then
    the median over the repeats."""
    return float(np.median([np.median(times[regime][function]) for times, _ in runs]))


def ratio_cell(runs, regime: str, numerator: int = 1, denominator: int = 2) -> str:
    """The ratio of two timed functions' :func:`median_ms` (by default "ours / floor"), and the
    range of the repeats' own ratios when there are several (the spread between runs on a
    shared machine)."""
    ratio = median_ms(runs, regime, numerator) / median_ms(runs, regime, denominator)
    if len(runs) == 1:
        return f"{ratio:.2f}"
    each = [np.median(times[regime][numerator]) / np.median(times[regime][denominator]) for times, _ in runs]
    return f"{ratio:.2f} ({min(each):.2f}-{max(each):.2f})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--repeats", type=int, default=1, help="measurements per row; the table shows medians")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--clock", choices=CLOCKS, default="cpu",
                        help="wall: elapsed time; cpu: the process's CPU time, insensitive to other "
                             "processes on a shared machine (meaningful with --threads 1)")
    parser.add_argument("--rows", nargs="+", choices=[name for name, _ in ROWS], default=[name for name, _ in ROWS])
    parser.add_argument("--predecessor", choices=("backbone", "none"), default="backbone",
                        help=f"what runs before every cold call, ahead of the {FLUSH_MIB} MiB write: the CPU "
                             f"configs' backbone pass on {PREDECESSOR_IMAGES} images (as a training step's pass "
                             "precedes the head), or "
                             "nothing (then a function's time depends on the one timed before it)")
    parser.add_argument("--dims", nargs="+", type=int, default=[2048, 1280, 128], help="feature dimensions d")
    parser.add_argument("--label", default="", help="a name for this run's section, e.g. the commit measured")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks", "o2cap_head.md"))
    parser.add_argument("--append", action="store_true", help="add this run to the output file as a new section")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="also time the memory head of another checkout (e.g. a git worktree of an "
                             "earlier commit) side by side with ours, in this process")
    parser.add_argument("--parts", action="store_true",
                        help="also time the parts of O2CAP's step at d = 128 inside it, cold and warm")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]

    make_pass = cpu_backbone()
    backbone = backbone_step_ms(make_pass, args.steps, CLOCKS[args.clock])
    print(f"backbone step: {backbone:.1f} ms", flush=True)
    before = make_pass(PREDECESSOR_IMAGES) if args.predecessor == "backbone" else None
    rows_run = [(name, losses) for name, losses in ROWS if name in args.rows]
    table = []
    for dim in args.dims:
        for name, losses in rows_run:
            runs = [benchmark(dim, losses, args.steps, CLOCKS[args.clock], before) for _ in range(args.repeats)]
            # regime -> (per-image, ours, floor): medians over steps, then over the repeats.
            ms = {regime: [median_ms(runs, regime, i) for i in range(3)] for regime in ("cold", "warm")}
            (naive, ours, floor), (_, ours_warm, floor_warm) = ms["cold"], ms["warm"]
            table.append([name, " + ".join(losses), dim, f"{naive:.1f}", f"{ours:.2f}", f"{floor:.2f}",
                          ratio_cell(runs, "cold"), f"{ours_warm:.2f}", f"{floor_warm:.2f}",
                          ratio_cell(runs, "warm"), f"{naive / ours:.1f}x", f"{100 * ours / backbone:.1f} %",
                          runs[0][1]])
            print(table[-1], flush=True)
    headers = ["row", "losses", "d", "per-image head, cold (ms/step)", "ours, cold (ms/step)", "floor, cold (ms)",
               "ours / floor, cold", "ours, warm (ms/step)", "floor, warm (ms)", "ours / floor, warm",
               "speed-up vs per-image (cold)", "ours / backbone step, cold", "ATen ops per step (ours)"]
    text = tabulate(table, headers=headers, tablefmt="github")
    print(text)
    title = "# O2CAP head: time per training step\n\n" + READING + "\n"
    rows, dims = " ".join(args.rows), " ".join(map(str, args.dims))
    cold_after = f"a backbone pass on {PREDECESSOR_IMAGES} images, then " if before else ""
    header = (f"## {args.label + ': ' if args.label else ''}{args.clock} time, {args.threads} thread(s)\n\n"
              f"`python benchmarks/o2cap_head.py --steps {args.steps} --repeats {args.repeats} --threads "
              f"{args.threads} --clock {args.clock} --rows {rows} --dims {dims} --predecessor {args.predecessor}`: "
              f"{args.clock} time of the forward, backward and memory update of the loss head, cold (after "
              f"{cold_after}writing {FLUSH_MIB} MiB) and warm (its second run in a row), the median over "
              f"{args.steps} steps, then the median over {args.repeats} measurement(s); batch {BATCH} (8 proxies "
              f"x 4), Z = {NUM_PROXIES} proxies over "
              f"{NUM_CAMS} cameras, K1 = 50, K2 = 3, float32; backbone step {backbone:.0f} ms (MobileNetV2, "
              f"{BATCH} images at 128 x 64, forward and backward); torch {torch.__version__}, "
              f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d %H:%M')}; 1-minute load "
              f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after (other processes share the "
              f"{os.cpu_count()} cores).\n\n")
    flags = []
    if args.baseline:
        baseline = load_baseline(args.baseline)
        commit = subprocess.run(["git", "-C", args.baseline, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "its commit unknown"
        rows_vs = []
        for dim in args.dims:
            for name, losses in rows_run:
                runs = [side_by_side(dim, losses, args.steps, CLOCKS[args.clock], baseline, before)
                        for _ in range(args.repeats)]
                cells = [name, " + ".join(losses), dim]
                for regime in ("cold", "warm"):
                    base, ours = median_ms(runs, regime, 0), median_ms(runs, regime, 1)
                    cells += [f"{base:.2f}", f"{ours:.2f}", ratio_cell(runs, regime, numerator=1, denominator=0)]
                cells += list(runs[0][1])
                rows_vs.append(cells)
                print(rows_vs[-1], flush=True)
        text += (f"\n\nOurs against the baseline's head ({commit}, `--baseline`), side by side in this process on "
                 "the same batches, alternating and swapping order every other batch; median over "
                 f"{args.steps} steps, then over {args.repeats} measurement(s) (the range of the measurements' "
                 "ratios in brackets):\n\n"
                 + tabulate(rows_vs, headers=["row", "losses", "d", "baseline, cold (ms)", "ours, cold (ms)",
                                              "ours / baseline, cold", "baseline, warm (ms)", "ours, warm (ms)",
                                              "ours / baseline, warm", "ATen ops (baseline)", "ATen ops (ours)"],
                            tablefmt="github"))
        print(text)
        flags.append(f"--baseline {args.baseline}")
    if args.parts:
        parts = part_times(128, dict(ROWS)["O2CAP"], args.steps, CLOCKS[args.clock], before)
        part_rows = [[part, f"{parts['cold'][part]:.2f}", f"{parts['warm'][part]:.2f}"] for part in parts["cold"]]
        text += ("\n\nThe parts of O2CAP's step at d = 128 (`--parts`), timed inside it, the median over "
                 f"{args.steps} steps (the parts' medians need not add up to the whole step's; the rest is "
                 "the head's own Python and the operators between the parts):\n\n"
                 + tabulate(part_rows, headers=["part", "cold (ms)", "warm (ms)"], tablefmt="github"))
        print(text)
        flags.append("--parts")
    header = header.replace(f"--predecessor {args.predecessor}`",
                            f"--predecessor {args.predecessor}{''.join(' ' + flag for flag in flags)}`")
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "a" if args.append else "w") as f:
        f.write(("\n" if args.append else title) + header + text + "\n")


if __name__ == "__main__":
    main()
