#!/usr/bin/env python
"""L2-normalised features of a folder, glob or CSV of images with a trained model, to an .npz.

    python tools/extract_features.py --config-file output/O2CAP/demo_cpu/config.yaml \\
        --input my_cameras/ --output feats.npz MODEL.WEIGHTS output/O2CAP/demo_cpu/model_best.pth

--input: a folder (first-level sub-folders are cameras; images directly in it get camera -1),
a glob pattern in quotes ("crops/**/*.jpg"; camera -1), or a CSV file with a path column and
an optional camera column. The .npz holds ``features`` (N, d) float32, ``paths`` (N,),
``cams`` (N,) (camera ids by sorted name, -1 unknown) and ``camera_names`` (id -> name).
Runs on MODEL.DEVICE (the *_cpu.yml configs: cpu); unreadable images follow
UNSUP.CORRUPT_IMAGES (error | skip).
"""
import argparse
import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401  (fastreid compat + registration)
from dcmip.data.camera_folders import list_images  # noqa: E402
from dcmip.data.checks import check_images  # noqa: E402
from dcmip.engine.defaults import setup_tool_cfg  # noqa: E402
from dcmip.engine.inference import entries_to_arrays, image_features, load_model, save_features  # noqa: E402
from dcmip.registry import UserInputError  # noqa: E402

logger = logging.getLogger("dcmip.extract_features")


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config the model was trained with")
    parser.add_argument("--input", required=True, help="folder, glob pattern or CSV file of images")
    parser.add_argument("--output", required=True, help="the .npz to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser


def main(args):
    cfg = setup_tool_cfg(args.config_file, args.opts)
    entries = check_images(list_images(args.input), cfg.UNSUP.CORRUPT_IMAGES)
    paths, cams, camera_names = entries_to_arrays(entries)
    logger.info(f"{len(paths)} images, cameras: " + (", ".join(f"{n} -> {i}" for i, n in enumerate(camera_names))
                                                      or "unknown (-1)"))
    features = image_features(cfg, load_model(cfg), paths, cams)
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    save_features(args.output, features, paths, cams, camera_names)
    print(f"wrote {features.shape[0]} features of dimension {features.shape[1]} to {args.output}")


if __name__ == "__main__":
    try:
        main(get_parser().parse_args())
    except UserInputError as e:
        sys.exit(f"error: {e}")
