"""The curves of a run's ``metrics.json``, one panel per question a person asks of it.

1. How many pseudo identities, and do they cross cameras? (clusters, clusters spanning more
   than one camera, camera proxies)
2. How much of the data is trained on? (images kept, outliers)
3. Is the loss going down? (every ``loss_*`` and their total, per logged step)
4. Is it getting better? (NMI / ARI of the pseudo labels when the train set has identities,
   mAP / Rank-1 when there is a test set; a note when neither is known)

The x axis counts epochs trained: the clustering of epoch ``e`` is drawn at ``e`` (the
model it used had trained ``e`` epochs), an evaluation after epoch ``e`` at ``e + 1``.
matplotlib is an optional extra (``pip install .[plots]``).
"""
import io
import json
import math
from typing import Dict, List, Sequence, Tuple

from PIL import Image

Series = Tuple[List[float], List[float]]

CLUSTER_KEYS = (("cluster/clusters", "clusters"), ("cluster/clusters_multi_camera", "spanning > 1 camera"),
                ("cluster/proxies", "camera proxies"))
IMAGE_KEYS = (("cluster/images_kept", "images kept"), ("cluster/outliers", "outliers"))
# Plotted in percent, so that all share one axis.
QUALITY_KEYS = (("cluster/nmi", "NMI of pseudo labels", 100.0), ("cluster/ari", "ARI of pseudo labels", 100.0),
                ("mAP", "mAP", 1.0), ("Rank-1", "Rank-1", 1.0), ("teacher/mAP", "teacher mAP", 1.0))


def read_metrics(path: str) -> List[Dict]:
    """The records (one dict per line) of a ``metrics.json``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def series(records: Sequence[Dict], key: str, iters_per_epoch: int, per_step: bool = False) -> Series:
    """(x in epochs trained, value) of ``key``, in iteration order, the last value per
    iteration. Epoch-level scalars sit at ceil(iteration / iters_per_epoch) (see the module
    docstring); per-step ones (losses) at (iteration + 1) / iters_per_epoch."""
    points = {r["iteration"]: r[key] for r in records if key in r}
    its = sorted(points)
    xs = [(it + 1) / iters_per_epoch if per_step else math.ceil(it / iters_per_epoch) for it in its]
    return xs, [float(points[it]) for it in its]


def plot_curves(records: Sequence[Dict], iters_per_epoch: int, title: str = "") -> Image.Image:
    """A PNG-ready RGB image, about 1,500 x 900 pixels, of the four panels of the module
    docstring. Raises ImportError without matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    loss_keys = sorted({k for r in records for k in r if k.startswith("loss_")})
    # One epoch axis for all panels (losses start after the first logged step, clustering at 0).
    fig, axes = plt.subplots(2, 2, figsize=(15, 9), dpi=100, sharex="all")
    panels = (
        (axes[0, 0], "pseudo identities", [(k, name, 1.0, False) for k, name in CLUSTER_KEYS], "count"),
        (axes[0, 1], "train images", [(k, name, 1.0, False) for k, name in IMAGE_KEYS], "images"),
        (axes[1, 0], "losses", [(k, k, 1.0, True) for k in ["total_loss"] + loss_keys], "loss"),
        (axes[1, 1], "quality (needs identities or a test set)",
         [(k, name, scale, False) for k, name, scale in QUALITY_KEYS], "%"),
    )
    for ax, name, keys, unit in panels:
        drawn = 0
        for key, label, scale, per_step in keys:
            xs, ys = series(records, key, iters_per_epoch, per_step)
            if xs:
                ax.plot(xs, [y * scale for y in ys], marker=None if per_step else "o", markersize=4,
                        linewidth=1.2 if per_step else 1.8, label=label)
                drawn += 1
        ax.set_title(name, fontsize=13)
        ax.set_xlabel("epochs trained", fontsize=11)
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_ylabel(unit, fontsize=11)
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if drawn:
            ax.legend(fontsize=10, loc="best")
        else:
            ax.text(0.5, 0.5, "not known: the train set has no identities\nand DATASETS.TESTS is empty",
                    ha="center", va="center", fontsize=12, transform=ax.transAxes, color="0.4")
    if title:
        fig.suptitle(title, fontsize=14)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")
