#!/usr/bin/env python
"""Export the trained embedding network to ONNX and check it against PyTorch on real images.

    python tools/export_onnx.py --config-file output/O2CAP/demo_cpu/config.yaml --output model.onnx \\
        MODEL.WEIGHTS output/O2CAP/demo_cpu/model_best.pth

Exported: pixel mean / std normalisation, backbone, pooling, BN neck and L2 normalisation (the
memory head is training-only); dynamic batch axis. The check runs ONNX Runtime and PyTorch on
--images (default: the demo data's query images) as one batch and one image at a time, and
fails above --tolerance. Needs the deploy extra: pip install -e '.[deploy]'.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401  (fastreid compat + registration)
from dcmip.data.camera_folders import list_images  # noqa: E402
from dcmip.engine.defaults import setup_tool_cfg  # noqa: E402
from dcmip.engine.inference import EmbeddingNetwork, load_model, load_test_images  # noqa: E402
from dcmip.export import (export_onnx, input_description, max_abs_difference, onnxruntime_session,  # noqa: E402
                          require)
from dcmip.registry import UserInputError  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config the model was trained with")
    parser.add_argument("--output", required=True, help="the .onnx file to write")
    parser.add_argument("--images", default=os.path.join(os.environ["FASTREID_DATASETS"], "demo-market", "query"),
                        help="folder, glob or CSV of real images for the check (default: %(default)s)")
    parser.add_argument("--num-images", type=int, default=8, help="images used by the check")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted absolute difference")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return parser


def main(args) -> float:
    require("onnx", "deploy")
    require("onnxruntime", "deploy")
    cfg = setup_tool_cfg(args.config_file, args.opts)
    paths = [p for p, _ in list_images(args.images)][:args.num_images]
    network = EmbeddingNetwork(load_model(cfg))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    height, width = cfg.INPUT.SIZE_TEST
    export_onnx(network, height, width, args.output)
    session = onnxruntime_session(args.output)
    diff = max_abs_difference(network, session, load_test_images(cfg, paths))
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB)")
    print("\n".join(input_description(cfg, session.get_outputs()[0].shape[1])))
    print(f"check on {len(paths)} images from {args.images} (batch of {len(paths)} and batch 1): "
          f"max |ONNX Runtime - PyTorch| = {diff:.2e} (tolerance {args.tolerance:g})")
    if not diff <= args.tolerance:
        sys.exit(f"error: the ONNX model's features differ from PyTorch's by {diff:.2e} > {args.tolerance:g}; "
                 f"do not deploy this file.")
    return diff


if __name__ == "__main__":
    try:
        main(get_parser().parse_args())
    except UserInputError as e:
        sys.exit(f"error: {e}")
