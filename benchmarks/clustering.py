"""Time the clustering step (METHODS §1 steps 2-3) on synthetic re-ID-like features.

Synthetic 2048-d L2-normalised features with identity structure: N images of N / P
identities (P = 17 like Market-1501's train set, 31 like MSMT17's, 33 at N = 100,000), each
image its identity's centre plus Gaussian noise of a random strength, and 5% distractors
(pure noise, DBSCAN's outliers). For each size the exact kNN runs once (k = 30, sliced to k1
= 20); then for the O2CAP setting (k1 20, k2 6, eps 0.5) and the DCMIP one (k1 30, k2 6,
eps 0.6) the post-kNN work is timed: Jaccard distance, DBSCAN, and their sum, which is what
users wait for each epoch beyond the kNN. "extra peak" is the growth of the process's peak
resident memory during that post-kNN work (Linux VmHWM, reset before it). "load" is the
machine's 1-minute load average after the row: above the 2 cores, other processes were
taking CPU time from the measurement.

With --dense-check-max N (default 13,000), sizes up to N are also clustered by the dense
reference of tests/test_clustering.py (the authors' algorithm with dense N×N matrices) on the
same kNN, and the labels are compared.

Usage::

    PYTHONPATH=projects/DCMIP python benchmarks/clustering.py [--sizes 12936 32621 100000]

Prints a table and writes it to docs/benchmarks/clustering.md.
"""
import argparse
import gc
import os
import platform
import resource
import sys
import time

import faiss
import numpy as np
import scipy
import sklearn
import torch
from sklearn.cluster import DBSCAN
from tabulate import tabulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from dcmip.clustering import dbscan, jaccard_distance, knn, pseudo_label_scores  # noqa: E402
from test_clustering import dense_jaccard_reference  # noqa: E402

DIM = 2048
IMAGES_PER_ID = {12936: 17, 32621: 31}
SETTINGS = (("O2CAP", 20, 6, 0.5), ("DCMIP", 30, 6, 0.6))


def synthetic_features(n: int, seed: int = 0, dim: int = DIM):
    """(n, dim) float32 L2-normalised features and their identities (see module doc)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, max(1, n // IMAGES_PER_ID.get(n, 33)), n)
    centers = rng.standard_normal((ids.max() + 1, dim), dtype=np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    sigma = rng.uniform(0.6, 1.3, n).astype(np.float32)
    distractor = rng.random(n) < 0.05
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 8192):  # bounded float32 temporaries
        stop = min(n, start + 8192)
        noise = rng.standard_normal((stop - start, dim), dtype=np.float32) / np.sqrt(dim)
        mean = np.where(distractor[start:stop, None], 0, centers[ids[start:stop]])
        out[start:stop] = mean + sigma[start:stop, None] * noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out, ids


def _kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _reset_peak() -> int:
    """Reset the peak resident memory (VmHWM) to the current one and return it, in KiB."""
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _kib("VmHWM")


def run_size(n: int, dense_check_max: int, method: str):
    features, ids = synthetic_features(n)
    start = time.perf_counter()
    rank = knn(features, max(k1 for _, k1, _, _ in SETTINGS), method)
    knn_s = time.perf_counter() - start
    rows = []
    for name, k1, k2, eps in SETTINGS:
        base = _reset_peak()
        start = time.perf_counter()
        jac = jaccard_distance(features, k1, k2, initial_rank=rank[:, :k1])
        mid = time.perf_counter()
        labels = dbscan(jac, eps)
        stop = time.perf_counter()
        extra_mib = (_kib("VmHWM") - base) / 1024
        scores = pseudo_label_scores(labels, ids)
        identical = compare_with_dense(features, rank[:, :k1], k1, k2, eps, jac, labels) \
            if n <= dense_check_max else "not run"
        del jac
        rows.append([f"{n:,}", f"{name} ({k1}, {k2}, {eps})", f"{knn_s:.1f}",
                     f"{mid - start:.2f}", f"{stop - mid:.2f}", f"{stop - start:.2f}",
                     f"{extra_mib:,.0f}", scores["clusters"], f"{scores['outlier_fraction']:.1%}",
                     f"{scores['nmi']:.3f}", identical, f"{os.getloadavg()[0]:.1f}"])
        print(tabulate([rows[-1]], tablefmt="plain"), flush=True)
        gc.collect()
    return rows


def compare_with_dense(features, rank, k1, k2, eps, jac, labels) -> str:
    """"yes" when the dense reference's DBSCAN labels equal ours, else what differs.

    Both sides compute J in float32 in different orders (BLAS dot products, softmax), so a
    distance within rounding (~1e-6) of eps can fall on different sides of it.
    """
    ref = dense_jaccard_reference(features, rank, k1, k2)
    dense_labels = DBSCAN(eps=eps, min_samples=4, metric="precomputed").fit_predict(ref)
    if np.array_equal(labels, dense_labels):
        return "yes"
    ours = np.ones(ref.shape, dtype=np.float32)
    coo = jac.tocoo()
    ours[coo.row, coo.col] = coo.data
    flipped = (ours <= eps) != (ref <= eps)
    near = np.abs(ref[flipped] - eps).max()
    return (f"{int((labels != dense_labels).sum())} images differ: {int(flipped.sum()) // 2} "
            f"pairs on opposite sides of eps, all within {near:.0e} of it; max |ΔJ| "
            f"{np.abs(ours - ref).max():.0e}")


HEADERS = ["N", "setting (k1, k2, eps)", "kNN s", "Jaccard s", "DBSCAN s", "post-kNN s",
           "extra peak MiB", "clusters", "outliers", "NMI", "labels = dense", "load"]


def machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return (f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM; {torch.get_num_threads()} "
            f"torch / faiss threads; Python {platform.python_version()}, "
            f"torch {torch.__version__}, faiss {faiss.__version__}, numpy {np.__version__}, scipy {scipy.__version__}, "
            f"scikit-learn {sklearn.__version__}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[12936, 32621, 100000])
    parser.add_argument("--knn", default="exact", choices=["exact", "ivf", "hnsw"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dense-check-max", type=int, default=13000)
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks",
                                                         "clustering.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)

    load = os.getloadavg()[0]
    rows = [row for n in args.sizes for row in run_size(n, args.dense_check_max, args.knn)]
    table = tabulate(rows, HEADERS, tablefmt="github")
    print(table)
    command = "PYTHONPATH=projects/DCMIP python benchmarks/clustering.py " + " ".join(sys.argv[1:])
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    description = __doc__.split("\n", 1)[1].split("Usage::")[0].strip()
    peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    scale = ""  # benchmarks/clustering_scale.py's section, kept
    if os.path.exists(args.output):
        with open(args.output) as f:
            old = f.read()
        marker = old.find("## Scale: ")
        scale = "\n" + old[marker:] if marker >= 0 else ""
    with open(args.output, "w") as f:
        f.write(f"# Clustering step benchmark\n\nGenerated by `{command.strip()}` "
                f"({args.knn} kNN).\n\nMachine: {machine()}; load average "
                f"{load:.1f} when it started (the machine is shared).\n\n{description}\n\n"
                f"{table}\n\nPeak resident memory of the whole run (features, kNN, the dense "
                f"reference where run): {peak_gib:.1f} GiB.\n{scale}")


if __name__ == "__main__":
    main()
