#!/usr/bin/env python
"""The demo: evaluate the initial (ImageNet) weights, train unsupervised, evaluate the best
model, and print both result tables (fastreid's format) side by side."""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401
from dcmip.engine.checkpoint import AtomicCheckpointer  # noqa: E402
from dcmip.engine.defaults import build_trainer, setup_cfg  # noqa: E402
from dcmip.engine.trainer import UnsupervisedTrainer  # noqa: E402
from fastreid.evaluation.testing import print_csv_format  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()
    args.eval_only, args.resume = False, False
    cfg = setup_cfg(args)

    initial = UnsupervisedTrainer.test(cfg, UnsupervisedTrainer.build_model(cfg))
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    best = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
    model = UnsupervisedTrainer.build_model(cfg)
    AtomicCheckpointer(model).load(best)
    trained = UnsupervisedTrainer.test(cfg, model)

    print("\n==== Initial weights (ImageNet, before unsupervised training) ====")
    initial["dataset"] = f"{cfg.DATASETS.TESTS[0]} initial"
    print_csv_format(initial)
    print(f"==== Trained without labels ({best}) ====")
    trained["dataset"] = f"{cfg.DATASETS.TESTS[0]} trained"
    print_csv_format(trained)
    gain = trained["mAP"] - initial["mAP"]
    print(f"mAP {initial['mAP']:.1f}% -> {trained['mAP']:.1f}% ({gain:+.1f} points)")
    return 0 if gain > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
