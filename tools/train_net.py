#!/usr/bin/env python
"""Train or evaluate an unsupervised re-ID method (Cluster Contrast, O2CAP, DCMIP) with fastreid.

    python tools/train_net.py --config-file configs/DCMIP/market.yml --num-gpus 4
    python tools/train_net.py --config-file configs/O2CAP/market.yml --eval-only MODEL.WEIGHTS out/model_best.pth
    torchrun --nproc_per_node 4 tools/train_net.py --config-file configs/DCMIP/market.yml
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401  (fastreid compat + registration)
from dcmip.compat import USER_ERROR_EXIT_CODE  # noqa: E402
from dcmip.engine.defaults import load_cfg, main  # noqa: E402
from dcmip.engine.launch import launch  # noqa: E402
from dcmip.registry import TrainingStopped, UserInputError  # noqa: E402
from fastreid.engine import default_argument_parser  # noqa: E402
from torch.multiprocessing import ProcessExitedException  # noqa: E402

if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    try:
        load_cfg(args)  # bad input stops here, before any process is started
        launch(main, args)
    except (UserInputError, TrainingStopped) as e:
        sys.exit(f"error: {e}")
    except ProcessExitedException as e:
        if e.exit_code != USER_ERROR_EXIT_CODE:
            raise
        sys.exit(1)  # the worker printed its `error:` line
