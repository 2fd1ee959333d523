"""Hooks that save the pictures of :mod:`dcmip.visualization` (main process only)."""
import importlib.util
import logging
import os

import numpy as np

from fastreid.engine.train_loop import HookBase

from ..visualization import cluster_montage, plot_curves, read_metrics
from ..timing import timed
from .hooks import ClusteringHook

logger = logging.getLogger(__name__)


class MontageHook(HookBase):
    """UNSUP.VIS.MONTAGE: after each epoch's clustering (registered right after the
    :class:`ClusteringHook` it reads), ``OUTPUT_DIR/montages/epoch_<e>.png`` and, when
    ``to_tensorboard``, the same picture as the TensorBoard image ``montage``."""

    def __init__(self, cfg, clustering: ClusteringHook, to_tensorboard: bool):
        self.cfg = cfg
        self.clustering = clustering
        # The display name of each camera id: its value without the dataset prefix.
        self.camera_names = [str(c).rsplit("_", 1)[-1] for c in clustering.camera_values]
        self.to_tensorboard = to_tensorboard
        self.folder = os.path.join(cfg.OUTPUT_DIR, "montages")

    def before_train(self):
        os.makedirs(self.folder, exist_ok=True)
        logger.info(f"montages of the pseudo identities (UNSUP.VIS.MONTAGE): {self.folder}/epoch_<e>.png")

    def before_epoch(self):
        with timed("montage"):
            self._draw()

    def _draw(self):
        epoch, stats = self.trainer.epoch, self.clustering.stats
        title = (f"epoch {epoch}: {stats['clusters']} clusters ({stats['clusters_multi_camera']} span more than "
                 f"one camera), {stats['images_kept']} images kept, {stats['outliers']} outliers")
        image = cluster_montage(self.clustering.paths, self.clustering.labels.numpy(),
                                self.clustering.cams.numpy(), num_clusters=self.cfg.UNSUP.VIS.CLUSTERS,
                                seed=self.cfg.UNSUP.SEED, camera_names=self.camera_names, title=title)
        image.save(os.path.join(self.folder, f"epoch_{epoch:03d}.png"), optimize=True)
        if self.to_tensorboard:
            # CHW uint8, as fastreid's TensorBoard writer expects.
            self.trainer.storage.put_image("montage", np.asarray(image).transpose(2, 0, 1))


class CurvesHook(HookBase):
    """At the end of a run that trained to SOLVER.MAX_EPOCH, ``OUTPUT_DIR/curves.png`` from
    ``metrics.json`` (:func:`dcmip.visualization.plot_curves`) when matplotlib is installed,
    one line saying so otherwise. Registered after the writers, whose last scalars it draws."""

    def __init__(self, cfg):
        self.cfg = cfg

    def after_train(self):
        if self.trainer.iter < self.trainer.max_iter:
            return  # stopped early: the exception says why
        if importlib.util.find_spec("matplotlib") is None:
            logger.info("curves.png not drawn: matplotlib is not installed (pip install matplotlib, "
                        "or the extra: pip install -e '.[plots]')")
            return
        records = read_metrics(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))
        path = os.path.join(self.cfg.OUTPUT_DIR, "curves.png")
        title = f"{self.cfg.UNSUP.MEMORY.NAME} on {', '.join(self.cfg.DATASETS.NAMES)} ({self.cfg.OUTPUT_DIR})"
        plot_curves(records, self.cfg.UNSUP.ITERS, title).save(path, optimize=True)
        logger.info(f"training curves: {path}")
