"""The pseudo labels of one epoch: what the clustering step hands to memories and samplers."""
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np
import torch


@dataclass
class PseudoLabels:
    """Pseudo labels of the images kept this epoch (DBSCAN outliers already dropped).

    Row ``i`` of every per-image tensor describes the same image; ``indices[i]`` is that
    image's position in the full train set, so per-image results can be traced back to it.

    Attributes:
        features: (N, d) L2-normalised epoch-start features of the kept images (CPU or device).
        clusters: (N,) cluster label in [0, C).
        cams: (N,) camera id in [0, num_cams).
        proxies: (N,) camera-aware proxy label in [0, Z) (METHODS §2): one proxy per
            (cluster, camera) pair that has images.
        indices: (N,) index of the image in the full train set.
        teacher_features: (N, d) epoch-start features of the EMA teacher (DCMIP stage 2), or None.
        true_ids: (N,) ground-truth identities when the dataset has them; statistics only.
        epoch: the epoch these labels were made for (seeds per-epoch random draws).
    """
    features: torch.Tensor
    clusters: torch.Tensor
    cams: torch.Tensor
    proxies: torch.Tensor
    indices: torch.Tensor
    teacher_features: Optional[torch.Tensor] = None
    true_ids: Optional[torch.Tensor] = None
    epoch: int = 0

    @property
    def num_clusters(self) -> int:
        return int(self.clusters.max()) + 1 if self.clusters.numel() else 0

    @property
    def num_proxies(self) -> int:
        return int(self.proxies.max()) + 1 if self.proxies.numel() else 0

    @property
    def num_multi_camera_clusters(self) -> int:
        """Clusters whose images come from more than one camera (more than one camera-aware
        proxy): the cross-camera matches unsupervised re-ID is after (a cluster of one camera
        may be one scene, not one person)."""
        return int((torch.bincount(self.proxy_to_cluster(), minlength=self.num_clusters) > 1).sum())

    def proxy_to_cluster(self) -> torch.Tensor:
        """(Z,) cluster of every proxy."""
        out = torch.empty(self.num_proxies, dtype=torch.long, device=self.proxies.device)
        out[self.proxies] = self.clusters
        return out

    def proxy_to_cam(self) -> torch.Tensor:
        """(Z,) camera of every proxy."""
        out = torch.empty(self.num_proxies, dtype=torch.long, device=self.proxies.device)
        out[self.proxies] = self.cams
        return out


class LabelGroups(NamedTuple):
    """One batch's images grouped by label (cluster or proxy), built on the host by the
    collation so that the memories' per-label bookkeeping costs the training step no device
    operations and no host sync (METHODS §5).

    Attributes:
        labels: (U,) the distinct labels, in order of first occurrence in the batch.
        inverse: (B,) the row of each image's label in ``labels``.
        occurrence: (R, U) the batch position of the r-th occurrence of each label; where a
            label occurs fewer than r + 1 times, its first occurrence (masked by ``present``).
        present: (R, U) whether the label occurs more than r times.
        complete: every label occurs R times (``present`` is all True), known on the host.
        mean_weights: (B,) 1 / the number of images of the image's label: the weights of a
            per-label mean (O2CAP's per-camera reduction, with the batch grouped by camera).
        batch_labels: (B,) the labels themselves, on the host: what processes exchange to
            group a batch gathered across them.
    """
    labels: torch.Tensor
    inverse: torch.Tensor
    occurrence: torch.Tensor
    present: torch.Tensor
    complete: bool
    mean_weights: torch.Tensor
    batch_labels: np.ndarray

    @property
    def rounds(self) -> int:
        """R, the most occurrences of one label: the rounds of the sequential update."""
        return self.occurrence.shape[0]

    @classmethod
    def from_labels(cls, batch_labels) -> "LabelGroups":
        """Group ``batch_labels`` (B,) (any integer sequence) on the host."""
        batch_labels = np.asarray(batch_labels, dtype=np.int64).reshape(-1)
        labels, first, inverse, counts = np.unique(batch_labels, return_index=True, return_inverse=True,
                                                   return_counts=True)
        # Rows in order of first occurrence.
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        inverse = rank[inverse.reshape(-1)]
        rounds = int(counts.max()) if len(counts) else 0
        occurrence = np.tile(first[order], (rounds, 1))
        # The r-th occurrence of a label: positions sorted by (label row, position).
        by_row = np.lexsort((np.arange(len(batch_labels)), inverse))
        seen = np.arange(len(batch_labels)) - np.repeat(np.cumsum(counts[order]) - counts[order], counts[order])
        occurrence[seen, inverse[by_row]] = by_row
        present = np.arange(rounds)[:, None] < counts[order][None, :]
        # float64: cast to the losses' dtype, 1 / n rounds as if computed there.
        mean_weights = 1.0 / counts[order][inverse].astype(np.float64)
        return cls(torch.from_numpy(labels[order]), torch.from_numpy(inverse), torch.from_numpy(occurrence),
                   torch.from_numpy(present), bool(present.all()), torch.from_numpy(mean_weights), batch_labels)

    def to(self, device, non_blocking: bool = False) -> "LabelGroups":
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return self._replace(labels=move(self.labels), inverse=move(self.inverse),
                             occurrence=move(self.occurrence), present=move(self.present),
                             mean_weights=move(self.mean_weights))
