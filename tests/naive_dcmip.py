"""A naive, per-image DCMIP head written straight from METHODS §4.

It is the test oracle for :mod:`dcmip.memory.dcmip.functional` / :mod:`dcmip.memory.dcmip.head` and the
per-image baseline of ``benchmarks/dcmip_head.py``: it scores one image at a time, builds each
image's hardest-positive / hardest-negative logits with index lists, and updates the memories
one image (proxy A) or one cluster (proxy B, instances) at a time. It shares no code with the
vectorised implementation.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F


def naive_members(labels: torch.Tensor) -> Dict[int, List[int]]:
    """The batch positions of each label present, in batch order."""
    members: Dict[int, List[int]] = {}
    for i, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(i)
    return members


def naive_cross_entropy(scores: torch.Tensor, target: int) -> torch.Tensor:
    """-log softmax(scores)[target] of one image."""
    return torch.logsumexp(scores, dim=0) - scores[target]


def naive_cluster_contrast_loss(features: torch.Tensor, proxies_a: torch.Tensor, proxies_b: torch.Tensor,
                                labels: torch.Tensor, temp: float, margin: float) -> torch.Tensor:
    """L_cc = 0.5 (CE_B + relu(CE_A - r)), each CE the mean over the images of one softmax over
    the clusters' A (resp. B) proxies."""
    ce_a, ce_b = [], []
    for i in range(features.shape[0]):
        y = int(labels[i])
        ce_a.append(naive_cross_entropy(proxies_a @ features[i] / temp, y))
        ce_b.append(naive_cross_entropy(proxies_b @ features[i] / temp, y))
    mean_a = sum(ce_a) / len(ce_a)
    mean_b = sum(ce_b) / len(ce_b)
    return 0.5 * (mean_b + torch.clamp(mean_a - margin, min=0))


def naive_instance_loss(features: torch.Tensor, instances: torch.Tensor, labels: torch.Tensor,
                        num_clusters: int, temp: float) -> torch.Tensor:
    """L_ins: per image, the own cluster's logit is the minimum over its instances
    ``y + k C``, every other cluster's the maximum over its instances; CE, batch mean."""
    per_cluster = instances.shape[0] // num_clusters
    losses = []
    for i in range(features.shape[0]):
        y = int(labels[i])
        scores = instances @ features[i] / temp  # entry y + k C
        own = [y + k * num_clusters for k in range(per_cluster)]
        by_cluster = scores.reshape(per_cluster, num_clusters)  # [k, c] = entry c + k C
        logits = by_cluster.max(dim=0).values.clone()
        logits[y] = scores[own].min()
        losses.append(naive_cross_entropy(logits, y))
    return sum(losses) / len(losses)


def naive_sequential_update_(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                             momentum: float) -> torch.Tensor:
    """Proxy A, ``sequential``: one image at a time in batch order."""
    for i in range(features.shape[0]):
        y = int(labels[i])
        memory[y] = F.normalize(momentum * memory[y] + (1 - momentum) * features[i], dim=0)
    return memory


def naive_hardest_update_(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                          momentum: float) -> torch.Tensor:
    """Proxy A, ``hardest``: per cluster, its batch image least similar to A[y] (first on ties)."""
    for y, rows in naive_members(labels).items():
        sims = [float(features[i] @ memory[y]) for i in rows]
        hardest = rows[sims.index(min(sims))]
        memory[y] = F.normalize(momentum * memory[y] + (1 - momentum) * features[hardest], dim=0)
    return memory


def naive_mean_update_(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                       momentum: float) -> torch.Tensor:
    """Proxy B: per cluster, towards the mean of its batch features."""
    for y, rows in naive_members(labels).items():
        mean = sum(features[i] for i in rows) / len(rows)
        memory[y] = F.normalize(momentum * memory[y] + (1 - momentum) * mean, dim=0)
    return memory


def naive_replace_instances_(instances: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                             num_clusters: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Per cluster of the batch, its K entries from K of its batch features: without
    replacement when it has at least K, with replacement otherwise."""
    per_cluster = instances.shape[0] // num_clusters
    for y, rows in naive_members(labels).items():
        if len(rows) >= per_cluster:
            picks = torch.randperm(len(rows), generator=generator)[:per_cluster].tolist()
        else:
            picks = torch.randint(len(rows), (per_cluster,), generator=generator).tolist()
        for k, p in enumerate(picks):
            instances[y + k * num_clusters] = features[rows[p]]
    return instances


class NaiveDCMIPHead:
    """The whole per-image head: losses, then every memory update, as one training step does."""

    def __init__(self, proxies_a: torch.Tensor, proxies_b: torch.Tensor, instances: Optional[torch.Tensor],
                 temp: float = 0.05, margin: float = 0.2, momentum: float = 0.1, update: str = "sequential",
                 generator: Optional[torch.Generator] = None):
        self.proxies_a, self.proxies_b, self.instances = proxies_a, proxies_b, instances
        self.num_clusters = proxies_a.shape[0]
        self.temp, self.margin, self.momentum, self.update_rule = temp, margin, momentum, update
        self.generator = generator

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> Dict[str, torch.Tensor]:
        losses = {"loss_cc": naive_cluster_contrast_loss(features, self.proxies_a, self.proxies_b, labels,
                                                         self.temp, self.margin)}
        if self.instances is not None:
            losses["loss_ins"] = naive_instance_loss(features, self.instances, labels, self.num_clusters,
                                                     self.temp)
        return losses

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if self.update_rule == "sequential":
            naive_sequential_update_(self.proxies_a, features, labels, self.momentum)
        else:
            naive_hardest_update_(self.proxies_a, features, labels, self.momentum)
        naive_mean_update_(self.proxies_b, features, labels, self.momentum)
        if self.instances is not None:
            naive_replace_instances_(self.instances, features, labels, self.num_clusters, self.generator)
