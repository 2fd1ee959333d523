#!/usr/bin/env python
"""Ranked lists as PNG pages: each query and its top-k gallery images with their distances.

A labelled test set (green / red frames for the same / another identity, queries ordered by
AP, worst first by default):

    python tools/visualize_ranks.py --config-file configs/O2CAP/demo_cpu.yml --dataset DemoMarket \\
        --output output/ranks MODEL.WEIGHTS output/O2CAP/demo_cpu/model_best.pth

Unlabelled images (no frame colours, random queries by default): --query and --gallery each
take a folder (sub-folders are cameras), a glob, a CSV (path[,camera]) or an .npz of
tools/extract_features.py; without --gallery the query set is searched against itself (each
query's own image left out). --cross-camera keeps only other cameras' images in each list.

    python tools/visualize_ranks.py --query feats.npz --cross-camera --output output/ranks

Pages are <output>/ranks_001.png, ... with --per-page queries each.
"""
import argparse
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401  (fastreid compat + registration)
import fastreid.data.build as data_build  # noqa: E402
from dcmip.data.camera_folders import list_images  # noqa: E402
from dcmip.data.checks import check_images  # noqa: E402
from dcmip.engine.defaults import setup_tool_cfg  # noqa: E402
from dcmip.engine.inference import entries_to_arrays, image_features, load_features, load_model  # noqa: E402
from dcmip.evaluation.rank import evaluate_rank  # noqa: E402
from dcmip.rank_list import ORDERS, RankLists, draw_rank_page, rank_lists, select_queries  # noqa: E402
from dcmip.registry import UserInputError, lookup  # noqa: E402
from fastreid.data.datasets import DATASET_REGISTRY  # noqa: E402

def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="the model's config (not needed for .npz inputs)")
    parser.add_argument("--dataset", help="a labelled test set by name (DATASETS.TESTS), e.g. DemoMarket")
    parser.add_argument("--query", help="folder, glob, CSV or .npz of query images")
    parser.add_argument("--gallery", help="the same for the gallery (default: the query set)")
    parser.add_argument("--output", default="output/ranks", help="folder for the PNG pages")
    parser.add_argument("--topk", type=int, default=10, help="gallery images per query")
    parser.add_argument("--num-queries", type=int, default=32, help="queries drawn in all")
    parser.add_argument("--per-page", type=int, default=8, help="queries per page")
    parser.add_argument("--order", choices=ORDERS,
                        help="which queries: worst / best AP first (needs identities) or random "
                             "(default: worst with identities, random without)")
    parser.add_argument("--seed", type=int, default=0, help="seed of --order random")
    parser.add_argument("--cross-camera", action="store_true", help="leave the query's camera out of its list")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser


class Features:
    """What one side (query or gallery) needs: features, paths, cameras (-1 unknown), pids
    (None when unlabelled), camera names by id (None: show ids)."""

    def __init__(self, features, paths, cams, pids=None, camera_names=None):
        self.features, self.paths, self.cams, self.pids = features, list(paths), np.asarray(cams), pids
        self.camera_names = list(camera_names) if camera_names is not None and len(camera_names) else None

    def camera_labels(self):
        if self.camera_names is None:
            return self.cams
        return [self.camera_names[c] if c >= 0 else "" for c in self.cams.tolist()]


def _model_cfg(args, state):
    if "model" not in state:
        if not args.config_file:
            raise UserInputError("--config-file is needed to extract features of images (only .npz "
                                 "inputs of tools/extract_features.py need none).")
        state["cfg"] = setup_tool_cfg(args.config_file, args.opts)
        state["model"] = load_model(state["cfg"])
    return state["cfg"], state["model"]


def load_side(source: str, args, state) -> Features:
    if source.lower().endswith(".npz"):
        data = load_features(source)
        return Features(data["features"], data["paths"], data["cams"], camera_names=data["camera_names"])
    cfg, model = _model_cfg(args, state)
    paths, cams, names = entries_to_arrays(check_images(list_images(source), cfg.UNSUP.CORRUPT_IMAGES))
    return Features(image_features(cfg, model, paths, cams), paths, cams, camera_names=names)


def load_dataset(name: str, args, state):
    cfg, model = _model_cfg(args, state)
    dataset_cls = lookup(DATASET_REGISTRY, name, "--dataset")
    if not getattr(dataset_cls, "has_identities", True):
        raise UserInputError(f"--dataset {name} has no identities; give its images with --query instead.")
    dataset = dataset_cls(root=data_build._root)
    sides = []
    for items in (dataset.query, dataset.gallery):
        paths = [it[0] for it in items]
        cams = np.array([it[2] for it in items])
        sides.append(Features(image_features(cfg, model, paths, cams), paths, cams,
                              np.array([it[1] for it in items])))
    return sides


def query_ap(query: Features, gallery: Features) -> np.ndarray:
    """(Q,) AP of each query, NaN where it has no valid match (the evaluator's protocol)."""
    result = evaluate_rank(torch.from_numpy(query.features), torch.from_numpy(gallery.features),
                           query.pids, gallery.pids, query.cams, gallery.cams)
    return np.asarray(result.all_AP, dtype=np.float64)


def main(args):
    if bool(args.dataset) == bool(args.query):
        raise UserInputError("give either --dataset NAME (a labelled test set) or --query (and optionally --gallery).")
    if min(args.topk, args.num_queries, args.per_page) < 1:
        raise UserInputError("--topk, --num-queries and --per-page must be at least 1.")
    state = {}
    if args.dataset:
        query, gallery = load_dataset(args.dataset, args, state)
    else:
        query = load_side(args.query, args, state)
        gallery = load_side(args.gallery, args, state) if args.gallery else query
    if query.features.shape[1] != gallery.features.shape[1]:
        raise UserInputError(f"query features have dimension {query.features.shape[1]}, gallery ones "
                             f"{gallery.features.shape[1]}: extract both with the same model.")
    labelled = query.pids is not None
    order = args.order or ("worst" if labelled else "random")
    ap = query_ap(query, gallery) if labelled else None
    chosen = select_queries(order, args.num_queries, len(query.paths), ap, args.seed)
    ranks = rank_lists(query.features[chosen], gallery.features, args.topk,
                       [query.paths[i] for i in chosen], gallery.paths, query.cams[chosen], gallery.cams,
                       query.pids[chosen] if labelled else None, gallery.pids if labelled else None,
                       cross_camera=args.cross_camera)
    os.makedirs(args.output, exist_ok=True)
    legend = "green: same identity, red: another" if labelled else "unlabelled: no frame colours"
    pages = range(0, len(chosen), args.per_page)
    for page_no, start in enumerate(pages, 1):
        rows = slice(start, start + args.per_page)
        ranks_page = RankLists(ranks.index[rows], ranks.distance[rows],
                               None if ranks.match is None else ranks.match[rows])
        title = (f"{order} queries {start + 1}-{min(start + args.per_page, len(chosen))} of {len(chosen)}: "
                 f"query, then its top {args.topk} by cosine distance d ({legend})")
        image = draw_rank_page(chosen[rows], ranks_page, query.paths, gallery.paths, query.camera_labels(),
                               gallery.camera_labels(), ap, title)
        path = os.path.join(args.output, f"ranks_{page_no:03d}.png")
        image.save(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    try:
        main(get_parser().parse_args())
    except UserInputError as e:
        sys.exit(f"error: {e}")
