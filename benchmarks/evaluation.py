"""Time and memory of the test-set ranking: dcmip.evaluation.evaluate_rank (exact, blocked)
against fastreid's Python path (build_dist + eval_market1501, what ReidEvaluator runs when
its Cython module is not built, as after `pip install fastreid`).

    PYTHONPATH=projects/DCMIP python benchmarks/evaluation.py [--sizes market msmt17] [--dim 2048]
        [--fastreid-queries 1000 500] [--worst-case] [--out docs/benchmarks/evaluation.md]

Synthetic identity-structured features at the test-set sizes of Market-1501 (3,368 queries x
15,913 gallery, 751 identities, 6 cameras) and MSMT17 (11,659 x 82,161, 3,060 identities, 15
cameras): f = normalise(c_pid + 0.5 b_cam + s n), with c, b, n standard normal and s = 3.25
at d = 2048 (scaled with d to keep the signal-to-noise ratio; mAP about 50 to 60 % at Market
size: a middling model, whose last true matches lie deep in the list,
which is what costs the blocked ranking time). Each method runs in a child process that loads
the features, resets its peak-RSS counter (/proc/self/clear_refs) and reports wall time and
peak RSS above its starting RSS. fastreid's path runs on the first --fastreid-queries queries
and is extrapolated linearly in the number of queries (its time is the distance products,
an argsort and a per-query loop, all linear in the queries; its memory grows by 12 bytes per further (query, gallery) pair, the
float32 distances and np.argsort's int64 indices); on that subset the two methods' metrics
are compared. --worst-case adds
features without identity structure (every gallery image is a candidate of every query).
Prints a table and writes docs/benchmarks/evaluation.md.
"""
import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "projects", "DCMIP"))
from dcmip import provenance  # noqa: E402

SIZES = {  # queries, gallery, identities, cameras
    "market": (3368, 15913, 751, 6),
    "msmt17": (11659, 82161, 3060, 15),
}
NOISE = 3.25  # at d = 2048


def noise_scale(dim: int) -> float:
    """s with the same same-identity / different-identity separation as NOISE at d = 2048: the
    similarity spread of unrelated features is ~(1 + s^2) / sqrt(d) against a signal ~1."""
    return float(np.sqrt((1 + NOISE ** 2) * np.sqrt(dim / 2048) - 1))


def make_features(size: str, dim: int, folder: str, structured: bool = True, seed: int = 0):
    """Write q/g features (float32), pids and cams as .npy files into ``folder``."""
    import torch
    import torch.nn.functional as F
    num_q, num_g, num_ids, num_cams = SIZES[size]
    g = torch.Generator().manual_seed(seed)
    gp = torch.randint(1, num_ids + 1, (num_g,), generator=g)
    gc = torch.randint(0, num_cams, (num_g,), generator=g)
    qp = gp[torch.randint(0, num_g, (num_q,), generator=g)]  # every query id is in the gallery
    qc = torch.randint(0, num_cams, (num_q,), generator=g)
    centres = torch.randn(num_ids + 1, dim, generator=g)
    cams = torch.randn(num_cams, dim, generator=g)
    for name, pids, cams_ in (("q", qp, qc), ("g", gp, gc)):
        feats = torch.randn(len(pids), dim, generator=g).mul_(noise_scale(dim))
        if structured:
            feats += centres[pids] + 0.5 * cams[cams_]
        np.save(os.path.join(folder, f"{name}f.npy"), F.normalize(feats, dim=1).numpy())
        np.save(os.path.join(folder, f"{name}p.npy"), pids.numpy())
        np.save(os.path.join(folder, f"{name}c.npy"), cams_.numpy())
        del feats


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(method: str, folder: str, num_queries: int) -> dict:
    """Run one method on the saved features; time, peak extra RSS and the metrics."""
    import torch
    import dcmip  # noqa: F401  (fastreid compatibility)
    from dcmip.evaluation.rank import default_block_size, evaluate_rank, _Distance
    data = {k: np.load(os.path.join(folder, f"{k}.npy")) for k in ("qf", "gf", "qp", "gp", "qc", "gc")}
    if num_queries:
        for k in ("qf", "qp", "qc"):
            data[k] = data[k][:num_queries]
    qf, gf = torch.from_numpy(data["qf"]), torch.from_numpy(data["gf"])
    if method == "fastreid":
        from fastreid.evaluation.rank import eval_market1501
        from fastreid.utils.compute_dist import build_dist
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base = _rss_kb("VmRSS")
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if method == "ours":
        r = evaluate_rank(qf, gf, data["qp"], data["gp"], data["qc"], data["gc"])
        cmc, m_ap, m_inp = r.cmc, r.mAP, r.mINP
    else:
        dist = build_dist(qf, gf, "cosine")
        cmc, all_ap, all_inp = eval_market1501(dist, data["qp"], data["gp"], data["qc"], data["gc"], 50)
        m_ap, m_inp = float(np.mean(all_ap)), float(np.mean(all_inp))
    seconds = time.perf_counter() - start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = cpu_end.ru_utime + cpu_end.ru_stime - cpu.ru_utime - cpu.ru_stime
    out = {"seconds": seconds, "cpu_seconds": cpu_seconds, "extra_mb": (_rss_kb("VmHWM") - base) / 1024, "mAP": m_ap, "mINP": m_inp,
           "cmc": [float(x) for x in cmc[:10]], "queries": len(qf)}
    if method == "ours":
        # The float32 distance products alone (one block, times the number of blocks).
        b = min(default_block_size(len(gf)), len(qf))
        distance = _Distance(qf, gf, "cosine")
        t = time.perf_counter()
        distance.block(0, b)
        out["distance_seconds"] = (time.perf_counter() - t) * -(-len(qf) // b)
        # The same products in fastreid's layout (query-major), which the ranking avoids.
        t = time.perf_counter()
        torch.mm(distance.query[:b], distance.gallery.t())
        out["query_major_seconds"] = (time.perf_counter() - t) * -(-len(qf) // b)
    else:
        r = evaluate_rank(qf, gf, data["qp"], data["gp"], data["qc"], data["gc"])  # same subset
        out["max_abs_diff"] = max(abs(r.mAP - m_ap), abs(r.mINP - m_inp), float(np.abs(r.cmc - cmc).max()))
    return out


def run_child(method: str, folder: str, num_queries: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--data", folder, "--queries", str(num_queries)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"error: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def device_table(a) -> str:
    """Ours on ``a.device`` (e.g. cuda) beside ours on this machine's CPU, in one process: wall
    time (the device's first call warmed up on 100 queries), the device's peak extra memory,
    and the largest difference of mAP, mINP and CMC against the CPU's."""
    from tabulate import tabulate
    import torch
    import dcmip  # noqa: F401  (fastreid compatibility)
    from dcmip.evaluation.rank import evaluate_rank

    rows = []
    for size in a.sizes:
        num_q, num_g = SIZES[size][:2]
        with tempfile.TemporaryDirectory() as folder:
            make_features(size, a.dim, folder)
            d = {k: np.load(os.path.join(folder, f"{k}.npy")) for k in ("qf", "gf", "qp", "gp", "qc", "gc")}
        labels = (d["qp"], d["gp"], d["qc"], d["gc"])
        qf, gf = torch.from_numpy(d["qf"]), torch.from_numpy(d["gf"])
        start = time.perf_counter()
        cpu = evaluate_rank(qf, gf, *labels)
        cpu_s = time.perf_counter() - start
        qd, gd = qf.to(a.device), gf.to(a.device)
        evaluate_rank(qd[:100], gd, d["qp"][:100], d["gp"], d["qc"][:100], d["gc"])  # warm-up
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        dev = evaluate_rank(qd, gd, *labels)
        torch.cuda.synchronize()
        dev_s = time.perf_counter() - start
        peak_mb = (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        diff = max(abs(dev.mAP - cpu.mAP), abs(dev.mINP - cpu.mINP), float(np.abs(dev.cmc - cpu.cmc).max()))
        rows.append([f"{size} {num_q:,} x {num_g:,}", f"{cpu_s:.1f}", f"{dev_s:.2f}", f"{peak_mb:,.0f}",
                     f"{100 * dev.mAP:.2f} / {100 * dev.cmc[0]:.2f} / {100 * dev.mINP:.2f}", f"{diff:.1e}"])
        print(rows[-1], flush=True)
    name = torch.cuda.get_device_name(a.device)
    table = tabulate(rows, headers=["test set (queries x gallery)", f"CPU s ({os.cpu_count()} cores)",
                                    f"{name} s", "device peak extra MB", "mAP / R-1 / mINP %",
                                    "max abs diff vs CPU"], tablefmt="github")
    cmd = "python benchmarks/evaluation.py " + " ".join(sys.argv[1:])
    return "\n".join([
        f"# Test-set ranking on {name}", "", f"Generated by `{cmd}` at commit "
        f"{provenance.commit()}, torch {torch.__version__}; load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} after the run.", "",
        "The same evaluator (`dcmip.evaluation.rank.evaluate_rank`) with the features on the device, beside "
        "it on that machine's CPU; synthetic identity-structured features as in evaluation.md, cosine "
        "distance. The device's time is wall-clock after one warm-up call on 100 queries; its peak "
        "extra memory is torch's peak allocation above the features.", "", table, ""])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["market", "msmt17"], choices=list(SIZES))
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--fastreid-queries", type=int, nargs="+", default=[1000, 500],
                   help="queries fastreid's path runs on, per size (0 = all); extrapolated to all")
    p.add_argument("--worst-case", action="store_true",
                   help="also time ours on unstructured features at the first size")
    p.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "evaluation.md"))
    p.add_argument("--device", default=None,
                   help="time ours with the features on this device (e.g. cuda) beside the CPU instead")
    p.add_argument("--child", choices=["ours", "fastreid"], help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--queries", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.data, a.queries)))
        return
    if a.device:
        text = device_table(a)
        print(text)
        os.makedirs(os.path.dirname(a.out), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)
        return
    from tabulate import tabulate
    import torch

    loads = [os.getloadavg()]
    rows, notes = [], []
    cases = [(size, True) for size in a.sizes] + ([(a.sizes[0], False)] if a.worst_case else [])
    for i, (size, structured) in enumerate(cases):
        num_q, num_g = SIZES[size][:2]
        with tempfile.TemporaryDirectory() as folder:
            make_features(size, a.dim, folder, structured)
            ours = run_child("ours", folder)
            label = f"{size} {num_q:,} x {num_g:,}" + ("" if structured else " (no identity structure)")
            print(f"{label}: ours {ours['seconds']:.1f} s", flush=True)
            loads.append(os.getloadavg())
            row = [label, f"{ours['seconds']:.1f}", f"{ours['cpu_seconds']:.1f}", f"{ours['distance_seconds']:.1f}",
                   f"{ours['extra_mb']:,.0f}", f"{100 * ours['mAP']:.1f} / {100 * ours['cmc'][0]:.1f} / "
                   f"{100 * ours['mINP']:.1f}"]
            if structured:
                nq = a.fastreid_queries[min(i, len(a.fastreid_queries) - 1)]
                nq = num_q if nq == 0 else min(nq, num_q)
                theirs = run_child("fastreid", folder, nq)
                scale = num_q / nq
                how = "measured" if nq == num_q else f"extrapolated x{scale:.1f} from {nq:,} queries"
                # Time: linear in the queries (products, argsort, per-query loop). Memory: what the
                # subset needed plus 12 bytes per further (query, gallery) pair: the float32
                # distances and np.argsort's int64 indices, both (queries x gallery).
                t = theirs["seconds"] * scale
                cpu_t = theirs["cpu_seconds"] * scale
                mem = theirs["extra_mb"] + (num_q - nq) * num_g * 12 / 2 ** 20
                row += [f"{t:,.0f}", f"{cpu_t:,.0f}", f"{mem:,.0f}", how, f"{t / ours['seconds']:.0f}x",
                        f"{theirs['max_abs_diff']:.1e}"]
                print(f"  fastreid {t:.0f} s ({how}), max |diff| {theirs['max_abs_diff']:.1e}", flush=True)
                loads.append(os.getloadavg())
            else:
                row += ["", "", "", "not run", "", ""]
            rows.append(row)
            if size == "msmt17" and structured:
                flops = 2 * num_q * num_g * a.dim
                from dcmip.evaluation.rank import default_block_size
                b_q = min(default_block_size(num_g), num_q)
                notes.append(
                    f"Targets at MSMT17 size on 2 CPU cores, <= 30 s and <= 2 GB extra: memory "
                    f"{'met' if ours['extra_mb'] <= 2048 else 'NOT met'} ({ours['extra_mb']:,.0f} MB); time "
                    f"{'met' if ours['seconds'] <= 30 else 'NOT met'} ({ours['seconds']:.0f} s wall, "
                    f"{ours['cpu_seconds']:.0f} CPU-s). The float32 distance products alone "
                    f"({flops / 1e12:.1f} TFLOP at d = {a.dim}, computed by both methods) took "
                    f"{ours['distance_seconds']:.0f} s here, {flops / 1e9 / ours['distance_seconds']:.0f} "
                    f"GFLOP/s, computed gallery-major (gallery @ query_block.T, {b_q} queries per "
                    f"block); in fastreid's layout (query_block @ gallery.T) the same products take "
                    f"{ours['query_major_seconds']:.0f} s, {flops / 1e9 / ours['query_major_seconds']:.0f} "
                    f"GFLOP/s. The ranking itself took the other "
                    f"{max(ours['seconds'] - ours['distance_seconds'], 0):.0f} s.")
    headers = ["test set (queries x gallery)", "ours s", "ours CPU s", "of which distances s",
               "ours peak extra MB", "ours mAP / R-1 / mINP %", "fastreid s", "fastreid CPU s",
               "fastreid peak extra MB", "fastreid figures",
               "speed-up", "max abs diff (subset)"]
    table = tabulate(rows, headers=headers, tablefmt="github")
    print(table)
    cmd = "PYTHONPATH=projects/DCMIP .venv/bin/python benchmarks/evaluation.py " + " ".join(sys.argv[1:])
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
               f"{torch.__version__} with {torch.get_num_threads()} threads, numpy {np.__version__}")
    text = "\n".join([
        "# Test-set ranking: blocked exact evaluator vs fastreid's Python path", "",
        f"Generated by `{cmd.strip()}`.", "",
        f"Machine: {machine}. The machine was shared with other jobs: load average (1, 5, 15 min) "
        f"{' -> '.join('(' + ', '.join(f'{x:.1f}' for x in l) + ')' for l in loads)} "
        f"(before, then after each run). Figures are one run each; a loaded machine slows both "
        f"methods (with more runnable threads than cores the float32 matrix products and torch's "
        f"parallel loops suffer most).", "",
        f"Features: synthetic, d = {a.dim}, identity-structured (see the script's docstring); "
        f"cosine distance (TEST.METRIC cosine). Time: wall-clock of the whole ranking from the "
        f"features (distances included); CPU s: user + system time of the process (all threads), "
        f"less sensitive to the load than wall time. Peak extra memory: peak RSS above the RSS with the "
        f"features loaded. 'of which distances' is the float32 distance products alone (one block "
        f"timed, times the number of blocks): the part both methods must compute. fastreid's "
        f"figures beyond its subset are extrapolated linearly in the number of queries (memory: the "
        f"subset's peak plus 12 bytes per further query-gallery pair for its float32 distances "
        f"and int64 argsort indices); "
        f"'max abs diff' compares mAP, mINP and CMC (fractions) of the two methods on that subset.", "",
        table, ""] + [note + "\n" for note in notes])
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(text)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
