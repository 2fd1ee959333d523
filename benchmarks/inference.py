"""Inference speed on the CPU: feature extraction with the data loader (tools/extract_features.py's
path) and the bare network in PyTorch vs ONNX Runtime at batch 1 and batch 64, in one run.

    .venv/bin/python benchmarks/inference.py [--config-file configs/O2CAP/demo_cpu.yml]
        [--images ../shared/data/market1501-train/bounding_box_train] [--num-images 1024] [--threads 1 2]

The model is the CPU configs' ImageNet MobileNetV2 at 128x64 (the weights do not change the
speed). Extraction reads, decodes and resizes real images (Market-1501 train when present, else
the demo data) with DATALOADER.NUM_WORKERS workers and TEST.IMS_PER_BATCH images per batch.
The bare-network rows time a fixed batch of real images already in memory: median of
--repeats runs after a warm-up, PyTorch and ONNX Runtime taking turns with the same thread
count (each of --threads). Prints a table and writes docs/benchmarks/inference.md, with the
load average beside the figures.
"""
import argparse
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
os.environ.setdefault("FASTREID_DATASETS", os.path.join(ROOT, "datasets"))

import dcmip  # noqa: E402,F401
from dcmip.data.camera_folders import list_images  # noqa: E402
from dcmip.engine.defaults import setup_tool_cfg  # noqa: E402
from dcmip.engine.inference import EmbeddingNetwork, image_features, load_model, load_test_images  # noqa: E402
from dcmip.export import export_onnx, onnxruntime_session, run_onnx  # noqa: E402

MARKET = os.path.join(ROOT, "..", "shared", "data", "market1501-train", "bounding_box_train")
DEMO = os.path.join(ROOT, "datasets", "demo-market", "bounding_box_train")


def median_times(fns, repeats: int):
    """Median seconds of each of ``fns``, run in turn (so a change in the machine's load hits
    all of them alike), after one warm-up run each (allocations, ONNX Runtime's first-run
    optimisation)."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, record in zip(fns, times):
            start = time.perf_counter()
            fn()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", default=os.path.join(ROOT, "configs", "O2CAP", "demo_cpu.yml"))
    p.add_argument("--images", default=MARKET if os.path.isdir(MARKET) else DEMO)
    p.add_argument("--num-images", type=int, default=1024, help="images for the extraction row")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                   help="intra-op threads of PyTorch and ONNX Runtime, one set of rows each")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "inference.md"))
    a = p.parse_args()
    torch.set_num_threads(max(a.threads))
    load_start = os.getloadavg()[0]
    cfg = setup_tool_cfg(a.config_file, ["MODEL.DEVICE", "cpu"])
    paths = [path for path, _ in list_images(a.images)][:a.num_images]
    model = load_model(cfg)

    start = time.perf_counter()
    image_features(cfg, model, paths)
    extract_s = time.perf_counter() - start
    rows = [["extraction (loader + PyTorch)", max(a.threads), cfg.TEST.IMS_PER_BATCH, f"{extract_s:.1f} s total",
             f"{len(paths) / extract_s:,.0f}", ""]]

    network = EmbeddingNetwork(model).eval()
    height, width = cfg.INPUT.SIZE_TEST
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = os.path.join(tmp, "model.onnx")
        export_onnx(network, height, width, onnx_path)
        for threads in a.threads:
            torch.set_num_threads(threads)
            session = onnxruntime_session(onnx_path, threads=threads, spinning=False)
            for batch in (1, 64):
                images = load_test_images(cfg, paths[:batch])
                array = images.numpy()
                with torch.no_grad():
                    torch_s, ort_s = median_times([lambda: network(images), lambda: run_onnx(session, array)],
                                                  a.repeats)
                for name, seconds in (("PyTorch", torch_s), ("ONNX Runtime", ort_s)):
                    rows.append([f"network, {name}", threads, batch, f"{seconds * 1000:.1f} ms / batch",
                                 f"{batch / seconds:,.0f}", f"{torch_s / seconds:.2f}x"])

    table = tabulate(rows, headers=["what", "threads", "batch", "time", "images/s", "speed vs PyTorch"],
                     tablefmt="github")
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
               f"Python {platform.python_version()}, torch {torch.__version__}, onnxruntime "
               f"{__import__('onnxruntime').__version__}")
    text = "\n".join([
        "# Inference speed on the CPU", "",
        "Generated by `.venv/bin/python benchmarks/inference.py` (one run, all rows side by side).", "",
        f"Model: {os.path.relpath(a.config_file, ROOT)} ({cfg.MODEL.BACKBONE.NAME}, {height}x{width}, "
        f"ImageNet weights). Images: {os.path.normpath(a.images)}. Machine: {machine}. "
        f"Load average (1 min) {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the end: other "
        f"work on the machine slows every row alike, so compare the ratios.", "",
        f"Extraction reads, decodes and resizes the images with {cfg.DATALOADER.NUM_WORKERS} loader workers "
        f"(tools/extract_features.py's path). The network rows time a batch already in memory, median of "
        f"{a.repeats} runs after a warm-up, PyTorch and ONNX Runtime taking turns; \"threads\" is the "
        f"intra-op thread count of both (ONNX Runtime's without spinning, so that its idle threads leave "
        f"the cores to PyTorch's turn).", "",
        table, ""] + ([
        f"The load average was above the {os.cpu_count()} cores: threads of one PyTorch operation wait on "
        f"each other when the cores are taken, so its multi-threaded rows suffer most; the 1-thread rows "
        f"compare the two runtimes more fairly then.", ""] if max(load_start, os.getloadavg()[0]) > os.cpu_count()
        else []))
    print(text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
