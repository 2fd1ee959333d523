"""Cost of UNSUP.BN_GROUP_SIZE: training-mode forward + backward with BatchNorm in groups of G
images (dcmip.modeling.batch_norm, one F.batch_norm per contiguous group, then a cat) against
plain BatchNorm over the whole batch, and against the one-kernel alternative that moves the
groups into the channel axis ((B, C, H, W) -> (G, B/G * C, H, W) through a transpose copy, one
F.batch_norm, a transpose copy back).

Rows: one BatchNorm2d at a ResNet-50 stage-1 shape (C 256, 64 x 32) and MobileNetV2 1.0x (the
CPU configs' backbone) at 128 x 64, batch B, groups of B / 4 (the authors' 4 GPUs). The
variants alternate step by step, so load from other processes affects them alike; each figure
is the median CPU time of the process (one thread).

    PYTHONPATH=projects/DCMIP python benchmarks/batch_norm_groups.py [--batch 64] [--steps 15]

Prints a table and writes it to docs/benchmarks/batch_norm_groups.md.
"""
import argparse
import os
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

import dcmip  # noqa: F401
from dcmip.modeling.batch_norm import convert_group_batchnorm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class TransposedGroupBatchNorm2d(nn.BatchNorm2d):
    """The alternative: groups as extra channels (running statistics left out: cost only)."""

    group_size = 0

    def forward(self, x):
        b, c, h, w = x.shape
        n, g = b // self.group_size, self.group_size
        grouped = x.view(n, g, c, h, w).transpose(0, 1).reshape(g, n * c, h, w)
        out = F.batch_norm(grouped, None, None, self.weight.repeat(n), self.bias.repeat(n), True, 0.0, self.eps)
        return out.view(g, n, c, h, w).transpose(0, 1).reshape(b, c, h, w)


def transposed(module, group_size):
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            new = TransposedGroupBatchNorm2d(child.num_features, child.eps, child.momentum)
            new.weight, new.bias, new.group_size = child.weight, child.bias, group_size
            setattr(module, name, new)
        else:
            transposed(child, group_size)
    return module


def mobilenet():
    from fastreid.modeling.backbones.mobilenet import MobileNetV2

    torch.manual_seed(0)
    return MobileNetV2("BN", 1.0)


def time_step(model, x):
    start = time.process_time()
    model(x).float().mean().backward()
    return time.process_time() - start


def run_row(name, build, shape, group, steps):
    x = torch.randn(*shape)
    variants = {"whole batch (G = 0)": build(), f"ours, groups of {group}": convert_group_batchnorm(build(), group),
                f"transpose, groups of {group}": transposed(build(), group)}
    for model in variants.values():
        model.train()
        time_step(model, x)  # warm-up
    times = {k: [] for k in variants}
    for _ in range(steps):
        for k, model in variants.items():
            times[k].append(time_step(model, x))
    base = np.median(times["whole batch (G = 0)"])
    return [[name, k, f"{np.median(v) * 1e3:.1f}", f"{np.median(v) / base:.2f}"] for k, v in times.items()]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    group = args.batch // 4
    load_before = os.getloadavg()
    rows = run_row("BatchNorm2d(256), 64x32", lambda: nn.Sequential(nn.BatchNorm2d(256)),
                   (args.batch, 256, 64, 32), group, args.steps)
    rows += run_row("MobileNetV2 1.0x, 128x64", mobilenet, (args.batch, 3, 128, 64), group, args.steps)
    table = tabulate(rows, headers=["model", "BatchNorm", "ms / step (median)", "x whole batch"],
                     tablefmt="github")
    header = (f"# BatchNorm in groups (UNSUP.BN_GROUP_SIZE)\n\nForward + backward in training mode, batch "
              f"{args.batch}, groups of {group}, {args.steps} alternating steps per variant, process CPU "
              f"time on one thread. {platform.processor() or platform.machine()}, torch {torch.__version__}; "
              f"load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores shared "
              f"with other work).\n\n")
    text = header + table + "\n"
    print(text)
    out = os.path.join(ROOT, "docs", "benchmarks", "batch_norm_groups.md")
    with open(out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
