"""The pseudo labels of one epoch: what the clustering step hands to memories and samplers."""
from dataclasses import dataclass
from typing import Optional

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
