#!/usr/bin/env python
"""The demo: evaluate the initial (ImageNet) weights, train unsupervised, evaluate the best
model, and print both result tables (fastreid's format) side by side."""
import argparse
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401
from dcmip.engine.checkpoint import AtomicCheckpointer  # noqa: E402
from dcmip.engine.defaults import build_trainer, setup_cfg  # noqa: E402
from dcmip.engine.trainer import UnsupervisedTrainer  # noqa: E402
from dcmip import provenance  # noqa: E402
from fastreid.evaluation.testing import print_csv_format  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--report", help="also write the two tables as markdown to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE ...")
    args = parser.parse_args()
    args.eval_only, args.resume = False, False
    cfg = setup_cfg(args)
    start = time.time()

    initial = UnsupervisedTrainer.test(cfg, UnsupervisedTrainer.build_model(cfg))
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    best = os.path.join(cfg.OUTPUT_DIR, "model_best.pth")
    model = UnsupervisedTrainer.build_model(cfg)
    AtomicCheckpointer(model).load(best, checkpointables=[])
    trained = UnsupervisedTrainer.test(cfg, model)

    print("\n==== Initial weights (ImageNet, before unsupervised training) ====")
    initial["dataset"] = f"{cfg.DATASETS.TESTS[0]} initial"
    print_csv_format(initial)
    print(f"==== Trained without labels ({best}) ====")
    trained["dataset"] = f"{cfg.DATASETS.TESTS[0]} trained"
    print_csv_format(trained)
    gain = trained["mAP"] - initial["mAP"]
    summary = f"mAP {initial['mAP']:.1f}% -> {trained['mAP']:.1f}% ({gain:+.1f} points)"
    print(summary)
    if args.report:
        write_report(args, cfg, initial, trained, summary, time.time() - start)
    return 0 if gain > 0 else 1


def write_report(args, cfg, initial, trained, summary, seconds):
    from tabulate import tabulate

    keys = ["mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"]
    rows = [[name, *(f"{r[k]:.2f}" for k in keys)] for name, r in
            (("initial ImageNet weights", initial), ("trained without labels", trained))]
    commit = provenance.commit()
    os.makedirs(os.path.dirname(args.report) or ".", exist_ok=True)
    with open(args.report, "w") as f:
        f.write(f"# Demo result\n\nProduced by `make demo` (`python tools/demo.py --config-file "
                f"{os.path.relpath(args.config_file, ROOT)}`) at commit {commit} on {platform.machine()} "
                f"with {os.cpu_count()} CPU cores; evaluation and training took {seconds / 60:.1f} min.\n\n"
                f"Test set: {cfg.DATASETS.TESTS[0]} (identities disjoint from the training ones).\n\n")
        f.write(tabulate(rows, headers=["model", *keys], tablefmt="github") + f"\n\n{summary}\n")


if __name__ == "__main__":
    sys.exit(main())
