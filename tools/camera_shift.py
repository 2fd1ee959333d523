#!/usr/bin/env python
"""Appearance shift between every pair of cameras, on the *training* identities of the
MarketSplit protocol only (the test identities are never read), to pick the pair of the
two-camera protocol (docs/composite.md):

    .venv/bin/python tools/camera_shift.py                      # ~1-2 min on 2 cores
    .venv/bin/python tools/camera_shift.py --per-id-camera 4 --output docs/results/camera-shift.md

Statistics (dcmip/data/camera_shift.py): ``gap`` the same-identity within-camera minus
cross-camera cosine similarity of ImageNet MobileNetV2 (the zero-shot model), ``cross_map`` its
cross-camera retrieval mAP, ``domain`` 1 - cos of the cameras' mean features, ``colour`` the
distance of their mean RGB histograms. Rows are sorted by ``gap``; cameras are 1-based as in
Market's file names (c1..c6). Images are subsampled: at most --per-id-camera images of every
(identity, camera), a seeded choice.
"""
import argparse
import datetime
import os
import sys
from collections import defaultdict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401  (fastreid compat + registration)
from fastreid.data.data_utils import read_image  # noqa: E402
from dcmip.data.camera_shift import colour_histogram, pair_statistics  # noqa: E402
from dcmip.data.datasets import MarketSplit, parse_market_folder, split_identities  # noqa: E402
from dcmip.engine.defaults import setup_tool_cfg  # noqa: E402
from dcmip.engine.inference import image_features, load_model  # noqa: E402
from dcmip.registry import UserInputError  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(ROOT, "configs", "O2CAP", "market_split_cpu.yml"),
                        help="the model (default: the CPU split config's ImageNet MobileNetV2)")
    parser.add_argument("--per-id-camera", type=int, default=2, help="images per (identity, camera) at most")
    parser.add_argument("--train-ids", type=int, default=500, help="MarketSplit's num_train_ids")
    parser.add_argument("--seed", type=int, default=0, help="MarketSplit's seed, also of the subsample")
    parser.add_argument("--output", help="also write the table as Markdown to this file")
    args = parser.parse_args()

    folder = MarketSplit._find_split_dir(os.environ["FASTREID_DATASETS"], None)
    train, _, _ = split_identities(parse_market_folder(folder), args.train_ids, args.seed)
    groups = defaultdict(list)
    for item in train:
        if item[1] > 0:  # identities only, no distractors
            groups[item[1:]].append(item)
    rng = np.random.default_rng(args.seed)
    items = [group[i] for _, group in sorted(groups.items())
             for i in sorted(rng.permutation(len(group))[:args.per_id_camera])]
    paths = [path for path, _, _ in items]
    pids = np.array([pid for _, pid, _ in items])
    cams = np.array([cam for _, _, cam in items])

    cfg = setup_tool_cfg(args.config_file, [])
    features = image_features(cfg, load_model(cfg), paths, cams.tolist()).astype(np.float64)
    histograms = np.stack([colour_histogram(np.asarray(read_image(p))) for p in paths])
    rows = sorted(pair_statistics(features, histograms, pids, cams), key=lambda r: -r["gap"])

    lines = [f"Camera shift on the MarketSplit training identities ({args.train_ids} ids, seed {args.seed}; "
             f"{len(items)} images, at most {args.per_id_camera} per identity and camera) of {folder}, "
             f"features of {args.config_file} without MODEL.WEIGHTS (ImageNet). "
             f"{datetime.date.today()}, `tools/camera_shift.py --per-id-camera {args.per_id_camera}`.", "",
             "| cameras | shared train ids | gap (within - cross cos) | cross-camera mAP "
             "| domain (1 - cos of means) | colour (TV of mean hist) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        a, b = r["cameras"]
        lines.append(f"| c{a + 1}-c{b + 1} | {r['shared_ids']} | {r['gap']:.4f} | {100 * r['cross_map']:.1f} | "
                     f"{r['domain']:.4f} | {r['colour']:.4f} |")
    print("\n".join(lines))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    try:
        main()
    except UserInputError as e:
        sys.exit(f"error: {e}")
