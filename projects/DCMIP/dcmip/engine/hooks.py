"""Hooks of the unsupervised loop: the per-epoch clustering step and the learning rate."""
import logging
import time
from typing import List, Tuple

import numpy as np
import torch

from fastreid.engine.train_loop import HookBase
from fastreid.utils import comm

from ..clustering import camera_aware_proxies, cluster_features_distributed, pseudo_label_scores
from ..data.pseudo_dataset import PseudoLabelDataset, collate_with_multiplicity
from ..data.transforms import build_train_transforms
from ..registry import TrainingStopped
from ..sampling import build_sampler
from ..structures import PseudoLabels
from ..timing import record
from .features import ImageCache, extract_many
from .schedule import lr_factor

logger = logging.getLogger(__name__)


class ClusteringError(TrainingStopped):
    """The clustering step produced nothing trainable; the message names the epoch and cause."""


def check_finite(epoch: int, features: torch.Tensor, network: str) -> None:
    """Stop, naming the epoch, when ``network``'s epoch-start features hold NaN or inf: they
    would be clustered and copied into the memory, and every later loss would be NaN."""
    bad = ~torch.isfinite(features).all(dim=1)
    if bad.any():
        raise ClusteringError(
            f"epoch {epoch}: the {network} produced NaN or infinite features for {int(bad.sum())} of "
            f"{len(features)} train images, so they cannot be clustered. Training diverged: lower "
            f"SOLVER.BASE_LR, or resume from an earlier checkpoint (--resume restarts from model_last).")


class ClusteringHook(HookBase):
    """Before every epoch (METHODS §1): extract the train features, cluster them (Jaccard +
    DBSCAN), drop the outliers, rebuild the memory and the train loader, log the statistics.

    Under DDP the kNN search is split over the ranks, the Jaccard distance and DBSCAN run on
    rank 0 and its labels are broadcast, so every rank trains on the same pseudo labels.
    """

    def __init__(self, cfg, train_items: List[Tuple[str, object, int]], label_stats: bool = True):
        """``label_stats`` False: the items' pids are not identities (unlabelled data), so no
        NMI / ARI whatever UNSUP.LABEL_STATS says."""
        self.cfg = cfg
        self.items = train_items
        self.paths = [it[0] for it in train_items]
        # Camera id i is the i-th of the sorted camera values (e.g. "demomarket_3").
        self.camera_values = sorted({it[2] for it in train_items})
        cam_index = {c: i for i, c in enumerate(self.camera_values)}
        self.cams = torch.tensor([cam_index[it[2]] for it in train_items])
        pid_values = sorted({it[1] for it in train_items}, key=str)
        pid_index = {p: i for i, p in enumerate(pid_values)}
        self.true_ids = (torch.tensor([pid_index[it[1]] for it in train_items])
                         if cfg.UNSUP.LABEL_STATS and label_stats else None)
        self.transform = build_train_transforms(cfg)
        # Decoded train images kept across epochs for the epoch-start extraction.
        self.image_cache = ImageCache(cfg.UNSUP.FEATURE_CACHE_MB) if cfg.UNSUP.FEATURE_CACHE_MB > 0 else None
        self.pseudo = self.labels = self.stats = None

    def before_epoch(self):
        trainer, cfg, epoch = self.trainer, self.cfg, self.trainer.epoch
        start = time.perf_counter()
        model = trainer.unwrapped_model
        teacher = trainer.teacher_for_epoch()
        networks = {f"epoch {epoch} train features": model}
        if teacher is not None:
            networks[f"epoch {epoch} teacher features"] = teacher
        # Student and teacher in one pass over the images.
        extracted = list(extract_many(cfg, networks, self.items, cache=self.image_cache).values())
        features, teacher_features = extracted[0], (extracted[1] if teacher is not None else None)
        check_finite(epoch, features, "model")
        if teacher_features is not None:
            check_finite(epoch, teacher_features, "EMA teacher")
        source = teacher_features if cfg.UNSUP.CLUSTER.FEATURES == "teacher" and teacher is not None else features
        extract_time = time.perf_counter() - start

        start = time.perf_counter()
        c = cfg.UNSUP.CLUSTER
        labels = torch.from_numpy(cluster_features_distributed(
            source, k1=c.K1, k2=c.K2, eps=c.EPS, min_samples=c.MIN_SAMPLES, knn=c.KNN,
            knn_options=dict(nprobe=c.IVF_NPROBE, ef_search=c.HNSW_EF_SEARCH or None))).long()
        cluster_time = time.perf_counter() - start

        self.pseudo = self._pseudo_labels(epoch, labels, features, teacher_features)
        self.labels = labels  # every train image's, -1 for outliers (read by the montage)
        model.memory.reset(self.pseudo)
        trainer.set_data_loader(self._loader(epoch))
        record("features", extract_time)
        self._log(epoch, labels, extract_time, cluster_time)

    def after_epoch(self):
        """Log the memory head's statistics of the epoch (e.g. O2CAP's Fig. 5 association
        statistics), averaged over ranks."""
        per_rank = comm.all_gather(self.trainer.unwrapped_model.memory.epoch_statistics())
        keys = sorted({k for s in per_rank for k in s})
        if not keys:
            return
        stats = {k: float(np.mean([s[k] for s in per_rank if k in s])) for k in keys}
        logger.info(f"epoch {self.trainer.epoch} memory statistics: "
                    + ", ".join(f"{k} {v:.4f}" for k, v in stats.items()))
        self.trainer.storage.put_scalars(**{f"memory/{k}": v for k, v in stats.items()}, smoothing_hint=False)

    def _pseudo_labels(self, epoch, labels, features, teacher_features) -> PseudoLabels:
        kept = torch.nonzero(labels >= 0).squeeze(1)
        num_clusters = int(labels.max()) + 1 if len(kept) else 0
        if num_clusters == 0:
            raise ClusteringError(
                f"epoch {epoch}: DBSCAN marked all {len(labels)} train images as outliers (no cluster "
                f"with UNSUP.CLUSTER.EPS={self.cfg.UNSUP.CLUSTER.EPS}, MIN_SAMPLES="
                f"{self.cfg.UNSUP.CLUSTER.MIN_SAMPLES}). Raise UNSUP.CLUSTER.EPS, lower MIN_SAMPLES, "
                f"or check that the train set holds several images per identity.")
        if num_clusters == 1:
            raise ClusteringError(
                f"epoch {epoch}: a single cluster holds all {len(kept):,} kept train images "
                f"({len(labels) - len(kept):,} outliers); the contrastive losses need at least 2 clusters "
                f"(with one, every loss is 0 and nothing trains). Lower UNSUP.CLUSTER.EPS="
                f"{self.cfg.UNSUP.CLUSTER.EPS}, or check that the train set holds several identities.")
        clusters = labels[kept]
        cams = self.cams[kept]
        device = features.device
        return PseudoLabels(
            features=features[kept.to(device)],
            clusters=clusters,
            cams=cams,
            proxies=torch.as_tensor(camera_aware_proxies(clusters.numpy(), cams.numpy())).long(),
            indices=kept,
            teacher_features=teacher_features[kept.to(device)] if teacher_features is not None else None,
            true_ids=self.true_ids[kept] if self.true_ids is not None else None,
            epoch=epoch,
        )

    def _loader(self, epoch):
        from ..compat import data_loader_x

        cfg = self.cfg
        sampler = build_sampler(cfg, self.pseudo, seed=cfg.UNSUP.SEED * 1000 + epoch,
                                rank=comm.get_rank(), world_size=comm.get_world_size())
        local_batch = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
        return data_loader_x(
            comm.get_local_rank(),
            dataset=PseudoLabelDataset(self.paths, self.pseudo, self.transform, seed=cfg.UNSUP.SEED),
            batch_sampler=torch.utils.data.BatchSampler(sampler.with_positions(), local_batch, drop_last=True),
            collate_fn=collate_with_multiplicity,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            pin_memory=True,
        )

    def _log(self, epoch, labels, extract_time, cluster_time):
        p = self.pseudo
        stats = {
            "clusters": p.num_clusters,
            "clusters_multi_camera": p.num_multi_camera_clusters,
            "proxies": p.num_proxies,
            "proxies_per_cluster": p.num_proxies / p.num_clusters,
            "outliers": int((labels < 0).sum()),
            "images_kept": len(p.indices),
        }
        if self.true_ids is not None:
            scores = pseudo_label_scores(labels.numpy(), self.true_ids.numpy())
            stats.update(nmi=scores["nmi"], ari=scores["ari"])
        self.stats = stats
        msg = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
        logger.info(f"epoch {epoch} clustering: {msg} (features {extract_time:.1f}s, "
                    f"clustering {cluster_time:.1f}s)")
        self.trainer.storage.put_scalars(**{f"cluster/{k}": float(v) for k, v in stats.items()},
                                         smoothing_hint=False)


class StageLRScheduler(HookBase):
    """Sets every parameter group's learning rate from the absolute epoch and iteration
    (:func:`dcmip.engine.schedule.lr_factor`), so that a resumed run lands on exactly the
    rate of an uninterrupted one."""

    def __init__(self, cfg, optimizer):
        self.cfg = cfg
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]

    def before_step(self):
        factor = lr_factor(self.cfg, self.trainer.epoch, self.trainer.iter)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        self.trainer.storage.put_scalar("lr", self.base_lrs[0] * factor, smoothing_hint=False)
