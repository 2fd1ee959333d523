#!/usr/bin/env python
"""Prepare the ImageNet MobileNetV2 weights used by the CPU configs (see dcmip/weights.py)."""
import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "projects", "DCMIP"))

import dcmip  # noqa: E402,F401  (fastreid compat)
from dcmip.weights import DEFAULT_OUTPUT, prepare_mobilenetv2_weights  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    path = prepare_mobilenetv2_weights(parser.parse_args().output)
    print(f"ImageNet MobileNetV2 weights ready at {path}")
