#!/usr/bin/env python
"""Generate the synthetic demo dataset in Market-1501's layout (see dcmip/data/demo.py).

    python tools/make_demo_data.py --root datasets/demo-market --seed 0
    python tools/make_demo_data.py --preview demo_preview.png   # also draw a preview grid
    # The two-camera set with a strong camera shift (dataset DemoTwoCameras, issue 13):
    python tools/make_demo_data.py --root datasets/demo-two-cameras --num-cams 2 --camera-shift strong

A second run with the same arguments does nothing; other arguments regenerate the folders.
"""
import argparse
import importlib.util
import json
import logging
import os
import sys

_DEMO_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "DCMIP",
                        "dcmip", "data", "demo.py")


def load_demo_module():
    """Load dcmip/data/demo.py by path: importing it through the ``dcmip`` package would also
    import torch and fastreid (the package registers itself there), which making images does
    not need."""
    spec = importlib.util.spec_from_file_location("dcmip_demo_data", _DEMO_PY)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=os.path.join("datasets", "demo-market"),
                        help="output folder (default: %(default)s; DemoMarket reads "
                             "$FASTREID_DATASETS/demo-market)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-train-ids", type=int, default=120)
    parser.add_argument("--num-test-ids", type=int, default=60)
    parser.add_argument("--num-cams", type=int, default=6)
    parser.add_argument("--cams-per-id", type=int, nargs=2, metavar=("MIN", "MAX"),
                        help="cameras that see each identity (default: 2 to min(4, --num-cams))")
    parser.add_argument("--images-per-cam", type=int, nargs=2, default=(3, 6),
                        metavar=("MIN", "MAX"))
    parser.add_argument("--camera-shift", choices=("normal", "strong"), default="normal",
                        help="strong: neighbouring cameras at opposite ends of every camera setting")
    parser.add_argument("--preview", metavar="PNG",
                        help="also write a grid of 8 identities (rows) in every camera (columns)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    demo = load_demo_module()
    try:
        counts = demo.generate_demo_dataset(
            args.root, seed=args.seed, num_train_ids=args.num_train_ids,
            num_test_ids=args.num_test_ids, num_cams=args.num_cams,
            cams_per_id=args.cams_per_id or (2, min(4, args.num_cams)), images_per_cam=args.images_per_cam,
            camera_shift=args.camera_shift)
    except (ValueError, FileExistsError) as e:
        parser.exit(2, f"error: {e}\n")
    print(json.dumps(counts, indent=1))
    if args.preview:
        demo.preview_grid(args.seed, num_cams=args.num_cams, camera_shift=args.camera_shift).save(args.preview)
        print(f"preview written to {args.preview}")


if __name__ == "__main__":
    main()
