"""Same seed, same machine -> the same pseudo labels every epoch and the same metrics (issue 7)."""
import re

from test_train_e2e import run, tiny, workspace  # noqa: F401  (shared fixture)


def clustering_and_results(log):
    """Per-epoch clustering statistics (timings stripped) and evaluation rows."""
    clustering = [re.sub(r" \(features .*\)$", "", line.split("]: ", 1)[1])
                  for line in log.splitlines() if "clustering: clusters" in line]
    results = [line for line in log.splitlines() if "| DemoMarket |" in line]
    return clustering, results


def test_two_runs_with_the_same_seed_agree(workspace):  # noqa: F811
    root, weights = workspace
    logs = []
    for name in ("a", "b"):
        args = tiny(root, weights, "DATALOADER.NUM_WORKERS", "2")
        args[args.index("OUTPUT_DIR") + 1] = str(root / f"seed_{name}")
        out = run(args, root)
        logs.append(clustering_and_results(out.stdout + out.stderr))
    (clusters_a, results_a), (clusters_b, results_b) = logs
    assert len(clusters_a) == 2 and len(results_a) == 2
    assert clusters_a == clusters_b
    assert results_a == results_b
