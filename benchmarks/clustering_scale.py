"""The clustering step at N = 250,000 to 1,000,000: kNN, post-kNN time and peak memory.

Same synthetic identity-structured features as benchmarks/clustering.py (33 images per
identity, 5% distractors), but d = 256: an exact kNN at d = 2048 and N = 1,000,000 is
2 N² d = 4e15 flops, days on 2 cores, and even at d = 256 it is 5e14, hours: faiss's flat
search reached only 20-60 GFLOP/s at d = 256 on this machine (N = 100,000: 86-255 s
depending on the load). Per size and kNN method ("exact", and faiss's approximate "ivf" and
"hnsw" as UNSUP.CLUSTER.KNN selects them, default parameters) the script times
the kNN (k = 30) and then the post-kNN work on that method's graph in the DCMIP setting
(k1 30, k2 6, eps 0.6), the heavier of the two: Jaccard distance plus DBSCAN. "peak GiB" is
the process's peak resident memory during the step (Linux VmHWM, reset before it), features
included, i.e. what the machine must hold. Memory scales with d through the features: at
d = 2048 and N = 1,000,000 one float32 copy is 8 GB, and the kNN holds three (the caller's,
the L2-normalised one, the faiss index), which these d = 256 rows do not show.

Before an exact kNN the script times the search of 2,000 queries against all N points and
extrapolates; above --exact-budget-s (default 900 s) it skips the exact kNN and says so, and
the post-kNN rows of that size then come from the approximate graphs only.

With --compare-size N (e.g. 100,000) it also runs all three methods at that size and reports
each approximate method's recall of the exact 30 neighbours and the adjusted Rand index
(ARI) of its DCMIP-setting labels against the exact-kNN labels, every outlier its own
cluster (DBSCAN's outliers are not a group; as one cluster of ~5% of N its pairs would
outweigh all the others, and that ARI is given beside it).

Every run merges its rows (keyed by N and method) into docs/benchmarks/clustering_scale.json
and rewrites the "Scale" section of docs/benchmarks/clustering.md from all stored rows, so
sizes and methods can be run separately; benchmarks/clustering.py keeps that section.

Usage::

    PYTHONPATH=projects/DCMIP python benchmarks/clustering_scale.py \\
        --sizes 250000 500000 1000000 --knn exact,ivf,hnsw --compare-size 100000
"""
import argparse
import gc
import json
import os
import sys
import time

import faiss
import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score
from tabulate import tabulate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from clustering import ROOT, _kib, _reset_peak, machine, synthetic_features  # noqa: E402
from dcmip.clustering import KNN_METHODS, dbscan, jaccard_distance, knn  # noqa: E402
from dcmip.clustering.knn import _build_index  # noqa: E402
from dcmip import provenance  # noqa: E402

DIM = 256
K = 30
SETTING = ("DCMIP", 30, 6, 0.6)
CALIBRATION_QUERIES = 2000
SECTION = "## Scale: N = 250,000 to 1,000,000"
JSON = os.path.join(ROOT, "docs", "benchmarks", "clustering_scale.json")
HEADERS = ["N", "kNN", "kNN s", "kNN peak GiB", "Jaccard s", "DBSCAN s", "post-kNN s",
           "post-kNN peak GiB", "clusters", "outliers", "recall@30", "ARI vs exact",
           "ARI, outliers as one cluster", "load",
           "commit"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def exact_estimate(features: np.ndarray) -> float:
    """Seconds for the exact kNN of all N queries, extrapolated from CALIBRATION_QUERIES."""
    n = features.shape[0]
    index = faiss.IndexFlatL2(features.shape[1])
    index.add(features)
    start = time.perf_counter()
    index.search(features[:CALIBRATION_QUERIES], K)
    return (time.perf_counter() - start) * n / CALIBRATION_QUERIES


# How the approximate kNN time grows with N: IVF with nlist = sqrt(N) lists and a fixed nprobe
# scans N * nprobe * N / nlist vectors; HNSW inserts and searches in about N log N.
GROWTH = {"ivf": 1.5, "hnsw": 1.1}


def approx_estimate(n: int, method: str) -> str:
    """An estimate from the largest smaller size stored for ``method``, or nothing."""
    if not os.path.exists(JSON):
        return ""
    with open(JSON) as f:
        known = [r for r in json.load(f)["rows"]
                 if r["knn"] == method and "knn_s" in r and r["n"] < n]
    if not known:
        return ""
    ref = max(known, key=lambda r: r["n"])
    return (f", estimated {ref['knn_s'] * (n / ref['n']) ** GROWTH[method]:,.0f} s from "
            f"{ref['knn_s']:.0f} s at N = {ref['n']:,} (time ~ N^{GROWTH[method]})")


def timed_knn(features: np.ndarray, method: str, device: str = "cpu"):
    base = _reset_peak()
    start = time.perf_counter()
    if device != "cpu" and method == "exact":
        # As the trainer on a GPU: the features on the device, blocked matrix products there.
        rank = knn(torch.from_numpy(features).to(device), K, method)
    else:
        rank = knn(features, K, method)
    seconds = time.perf_counter() - start
    return rank, seconds, _kib("VmHWM") / 2 ** 20, base


def post_knn(features: np.ndarray, rank: np.ndarray):
    _, k1, k2, eps = SETTING
    _reset_peak()
    start = time.perf_counter()
    # As cluster_features (the trainer) does: only the pairs DBSCAN reads are kept.
    jac = jaccard_distance(features, k1, k2, initial_rank=rank[:, :k1], max_distance=eps)
    mid = time.perf_counter()
    labels = dbscan(jac, eps)
    stop = time.perf_counter()
    peak = _kib("VmHWM") / 2 ** 20
    del jac
    gc.collect()
    return labels, mid - start, stop - mid, peak


def singletons(labels: np.ndarray) -> np.ndarray:
    """Every outlier (-1) its own cluster: DBSCAN's outliers are not a group (training drops
    them), and taken as one cluster of ~5% of N their pairs would outweigh all the others."""
    return np.where(labels < 0, -1 - np.arange(labels.shape[0]), labels)


def recall(approx: np.ndarray, exact: np.ndarray) -> float:
    """Fraction of the exact k neighbours (the point itself included) found by ``approx``.
    Each row holds distinct indices, so a neighbour found by both appears twice in the row's
    sorted concatenation, next to itself."""
    hits = 0
    for start in range(0, exact.shape[0], 65536):  # bounded temporaries at N = 1,000,000
        both = np.sort(np.concatenate([approx[start:start + 65536], exact[start:start + 65536]], axis=1), axis=1)
        hits += int((both[:, 1:] == both[:, :-1]).sum())
    return hits / exact.size


def sampled_exact_neighbours(features: np.ndarray):
    """CALIBRATION_QUERIES sampled query indices (fixed seed) and their exact K neighbours
    against all N points: one flat search, the reference of the sampled recalls."""
    sample = np.sort(np.random.default_rng(0).choice(features.shape[0], CALIBRATION_QUERIES, replace=False))
    flat = faiss.IndexFlatL2(features.shape[1])
    flat.add(features)
    return sample, flat.search(features[sample], K)[1]


def run_size(n: int, methods, budget_s: float, compare: bool, commit: str, device: str = "cpu",
             host: str = "") -> list:
    log(f"N = {n:,}: generating {n:,} x {DIM} features ({n * DIM * 4 / 2 ** 30:.2f} GiB)")
    features, _ = synthetic_features(n, dim=DIM)
    rows, exact_rank, exact_labels, sampled = [], None, None, None
    for method in methods:
        if method == "exact" and device != "cpu":
            log(f"N = {n:,}: exact kNN on {device} (blocked matrix products)")
        elif method == "exact":
            estimate = exact_estimate(features)
            log(f"N = {n:,}: exact kNN estimated at {estimate:,.0f} s (2 N^2 d = "
                f"{2 * n * n * DIM:.1e} flops, extrapolated from {CALIBRATION_QUERIES:,} queries)")
            if estimate > budget_s:
                log(f"N = {n:,}: exact kNN SKIPPED: estimate {estimate:,.0f} s > --exact-budget-s "
                    f"{budget_s:,.0f}; post-kNN rows at this size use the approximate graphs")
                rows.append(dict(n=n, knn=method, skipped=f"estimated {estimate:,.0f} s"))
                continue
        else:
            log(f"N = {n:,}: {method} kNN (index build + search){approx_estimate(n, method)}")
        rank, knn_s, knn_peak, _ = timed_knn(features, method, device)
        log(f"N = {n:,}: {method} kNN {knn_s:.1f} s, peak {knn_peak:.2f} GiB; post-kNN ...")
        labels, jac_s, db_s, post_peak = post_knn(features, rank)
        row = dict(n=n, knn=method, knn_s=knn_s, knn_peak=knn_peak, jaccard_s=jac_s,
                   dbscan_s=db_s, post_peak=post_peak, clusters=int(labels.max() + 1),
                   outliers=float((labels == -1).mean()), load=os.getloadavg()[0],
                   commit=commit)
        if host:
            row["host"] = host
        if device != "cpu" and method == "exact":
            row["device"] = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
        if method == "exact":
            exact_rank, exact_labels = rank, labels
        elif exact_rank is None:
            # No exact graph at this size: the recall of sampled queries.
            if sampled is None:
                sampled = sampled_exact_neighbours(features)
            sample, sample_exact = sampled
            row["recall_sampled"] = recall(rank[sample], sample_exact)
        elif compare:
            row["recall"] = recall(rank, exact_rank)
            row["ari"] = adjusted_rand_score(singletons(exact_labels), singletons(labels))
            row["ari_grouped"] = adjusted_rand_score(exact_labels, labels)
        rows.append(row)
        log(f"N = {n:,}: {method}: Jaccard {jac_s:.1f} s + DBSCAN {db_s:.1f} s = "
            f"{jac_s + db_s:.1f} s, peak {post_peak:.2f} GiB"
            + (f", recall {row['recall']:.3f}, ARI {row['ari']:.4f}" if "ari" in row else "")
            + (f", recall of {CALIBRATION_QUERIES:,} sampled queries {row['recall_sampled']:.3f}"
               if "recall_sampled" in row else ""))
        del rank
        gc.collect()
    return rows


def nprobe_sweep(n: int, nprobes, commit: str) -> list:
    """IVF at size ``n``: recall@K of CALIBRATION_QUERIES sampled queries against their exact
    neighbours, and the full kNN's search time extrapolated from theirs, per nprobe. One index
    (as ``knn`` builds it) serves every nprobe, so this costs one build and a few small searches
    instead of one full kNN per nprobe."""
    log(f"N = {n:,}: nprobe sweep {list(nprobes)}: generating features, building the IVF index")
    features, _ = synthetic_features(n, dim=DIM)
    sample, exact_rank = sampled_exact_neighbours(features)
    queries = features[sample]
    start = time.perf_counter()
    index = _build_index(features, "ivf", None, 16, 32, 64)
    build_s = time.perf_counter() - start
    rows = []
    for nprobe in nprobes:
        index.nprobe = min(nprobe, index.nlist)
        start = time.perf_counter()
        _, rank = index.search(queries, K)
        search_s = (time.perf_counter() - start) * n / CALIBRATION_QUERIES
        rows.append(dict(n=n, nlist=int(index.nlist), nprobe=int(index.nprobe), recall=recall(rank, exact_rank),
                         build_s=build_s, search_s=search_s, load=os.getloadavg()[0], commit=commit))
        log(f"N = {n:,}: nlist {index.nlist}, nprobe {index.nprobe}: recall@{K} {rows[-1]['recall']:.3f}, "
            f"full search ~{search_s:,.0f} s (+ {build_s:.0f} s index build)")
    return rows


def sweep_table(rows: list) -> str:
    rows = sorted(rows, key=lambda r: (r["n"], r["nprobe"]))
    return tabulate([[f"{r['n']:,}", r["nlist"], r["nprobe"], f"{r['nprobe'] / r['nlist']:.1%}", f"{r['recall']:.3f}",
                      f"{r['build_s']:.0f}", f"{r['search_s']:,.0f}", f"{r['build_s'] + r['search_s']:,.0f}",
                      f"{r['load']:.1f}", r["commit"]] for r in rows],
                    ["N", "nlist", "nprobe", "lists visited", f"recall@{K} (sampled)", "index build s",
                     "search s (extrapolated)", "kNN s (estimated)", "load", "commit"], tablefmt="github")


def _method(row: dict) -> str:
    where = [row["device"]] if "device" in row else []
    where += [row["host"]] if "host" in row else []
    return row["knn"] + (f" ({'; '.join(where)})" if where else "")


def table(rows: list) -> str:
    def fmt(row):
        if "skipped" in row:
            return [f"{row['n']:,}", _method(row), f"skipped ({row['skipped']})"] + [""] * 12
        return [f"{row['n']:,}", _method(row), f"{row['knn_s']:.1f}", f"{row['knn_peak']:.2f}",
                f"{row['jaccard_s']:.1f}", f"{row['dbscan_s']:.1f}",
                f"{row['jaccard_s'] + row['dbscan_s']:.1f}", f"{row['post_peak']:.2f}",
                row["clusters"], f"{row['outliers']:.1%}",
                f"{row['recall']:.3f}" if "recall" in row else
                (f"{row['recall_sampled']:.3f}*" if "recall_sampled" in row else ""),
                f"{row['ari']:.4f}" if "ari" in row else "",
                f"{row['ari_grouped']:.4f}" if "ari_grouped" in row else "",
                f"{row['load']:.1f}", row["commit"]]
    order = {m: i for i, m in enumerate(KNN_METHODS)}
    rows = sorted(rows, key=lambda r: (r["n"], r.get("host", ""), order[r["knn"]]))
    return tabulate([fmt(r) for r in rows], HEADERS, tablefmt="github")


def _key(row: dict) -> tuple:
    """Rows are stored per size, method and machine (rows from another machine are kept beside
    this one's, not over them)."""
    return row["n"], row["knn"], row.get("host", "")


def write_docs(new_rows: list, command: str, output: str, new_sweep: list = ()) -> str:
    stored, sweep = {}, {}
    if os.path.exists(JSON):
        with open(JSON) as f:
            saved = json.load(f)
        stored = {_key(r): r for r in saved["rows"]}
        sweep = {(r["n"], r["nprobe"]): r for r in saved.get("nprobe_sweep", [])}
    stored.update({_key(r): r for r in new_rows})
    sweep.update({(r["n"], r["nprobe"]): r for r in new_sweep})
    rows = list(stored.values())
    with open(JSON, "w") as f:
        json.dump({"rows": rows, "nprobe_sweep": list(sweep.values())}, f, indent=1)
    description = __doc__.split("\n", 1)[1].split("Usage::")[0].strip()
    text = (f"{SECTION}\n\nLast run: `{command}`.\n\nMachine: {machine()}.\n\n{description}\n\n"
            f"{table(rows)}\n\n* recall of {CALIBRATION_QUERIES:,} sampled queries against their exact "
            f"neighbours, where the exact kNN of all N was not run. The \"load\" column is the 1-minute load average after the row "
            f"(2 cores: above 2, other processes took CPU time from it); \"commit\" is the "
            f"code the row was measured with.\n")
    if sweep:
        text += (f"\n### IVF: recall against nprobe\n\n`--nprobe-sweep N --nprobes ...`: one IVF index "
                 f"built as `knn` builds it (nlist = sqrt(N)), then {CALIBRATION_QUERIES:,} sampled "
                 f"queries searched at each nprobe; recall@{K} against their exact neighbours, and the "
                 f"full search time extrapolated from theirs.\n\n{sweep_table(list(sweep.values()))}\n")
    head = ""
    if os.path.exists(output):
        with open(output) as f:
            head = f.read().split(SECTION)[0].rstrip() + "\n\n"
    with open(output, "w") as f:
        f.write(head + text)
    return table(rows)


def main():
    global JSON
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="sizes of the scale rows (default 250000 500000 1000000, none when "
                        "--compare-size or --nprobe-sweep is given)")
    parser.add_argument("--knn", default=None,
                        help="comma-separated kNN methods, of " + ", ".join(KNN_METHODS) + " (default all)")
    parser.add_argument("--compare-size", type=int, default=None,
                        help="also run exact, ivf and hnsw at this N for recall and ARI")
    parser.add_argument("--exact-budget-s", type=float, default=900.0)
    parser.add_argument("--json", default=JSON, help="where the rows are stored and merged")
    parser.add_argument("--nprobe-sweep", type=int, nargs="*", default=[],
                        help="sizes at which to measure IVF recall against nprobe (sampled queries)")
    parser.add_argument("--nprobes", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="where the exact kNN runs (e.g. cuda: blocked matrix products on the GPU)")
    parser.add_argument("--host", default="",
                        help="name of a machine other than the 2-core one the stored rows come from; "
                             "its rows are stored beside those (e.g. 'H200 machine, 16 cores')")
    parser.add_argument("--merge", nargs="+", default=[],
                        help="JSON files of another run (e.g. from the GPU machine) to merge into "
                             "--json, then rewrite the docs; nothing is measured")
    parser.add_argument("--output", default=os.path.join(ROOT, "docs", "benchmarks",
                                                         "clustering.md"))
    args = parser.parse_args()
    JSON = args.json
    methods = args.knn.split(",") if args.knn else list(KNN_METHODS)
    unknown = set(methods) - set(KNN_METHODS)
    if unknown:
        parser.error(f"unknown --knn {sorted(unknown)}; choose from {KNN_METHODS}")
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    commit = provenance.commit()
    log(f"load average {os.getloadavg()[0]:.1f} at start; commit {commit}")
    rows = []
    if args.merge:
        for path in args.merge:
            with open(path) as f:
                rows += json.load(f)["rows"]
        command = "PYTHONPATH=projects/DCMIP python benchmarks/clustering_scale.py " + " ".join(sys.argv[1:])
        print(write_docs(rows, command, args.output))
        return
    if args.sizes is None:
        args.sizes = [] if args.compare_size or args.nprobe_sweep else [250000, 500000, 1000000]
    command = ("PYTHONPATH=projects/DCMIP python benchmarks/clustering_scale.py "
               + " ".join(sys.argv[1:])).strip()
    if args.compare_size:
        # The exact graph first: the approximate ones are compared with it.
        compared = ["exact"] + [m for m in methods if m != "exact"]
        rows += run_size(args.compare_size, compared, float("inf"), True, commit, args.device, args.host)
        write_docs(rows, command, args.output)  # stored per size: a run cut later keeps these rows
    for n in args.sizes:
        rows += run_size(n, methods, args.exact_budget_s, False, commit, args.device, args.host)
        write_docs(rows, command, args.output)
    sweep = [row for n in args.nprobe_sweep for row in nprobe_sweep(n, args.nprobes, commit)]
    print(write_docs(rows, command, args.output, sweep))
    if sweep:
        print(sweep_table(sweep))


if __name__ == "__main__":
    main()
