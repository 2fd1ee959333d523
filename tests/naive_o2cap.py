"""A naive, per-image O2CAP head written straight from METHODS §2 and the paper's equations.

It is the test oracle for :mod:`dcmip.memory.o2cap.functional` / :mod:`dcmip.memory.o2cap.head` and the
stand-in for the authors' head in ``benchmarks/o2cap_head.py``. Like the authors' code it
computes the scores one camera group at a time and then loops over the images in Python,
selecting positives and negatives with index lists and sorts, and updates the memory one
image at a time. It shares no code with the vectorised implementation.
"""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F


def naive_members(labels: torch.Tensor) -> Dict[int, List[int]]:
    """The rows of each label, in row order."""
    members: Dict[int, List[int]] = {}
    for i, label in enumerate(labels.tolist()):
        members.setdefault(label, []).append(i)
    return members


def naive_centroids(features: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """Each entry: the normalised mean of its images' features."""
    members = naive_members(labels)
    return torch.stack([F.normalize(features[members[label]].mean(dim=0), dim=0) for label in range(num_labels)])


def naive_update_(memory: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                  momentum: float) -> torch.Tensor:
    """Eq. 1, one image at a time in batch order."""
    for i in range(len(labels)):
        y = int(labels[i])
        memory[y] = F.normalize(momentum * memory[y] + (1 - momentum) * features[i], dim=0)
    return memory


def naive_camera_reduction(terms: List[torch.Tensor], cams: Sequence[int]) -> torch.Tensor:
    """Sum over the cameras present of the mean of the terms of that camera's images."""
    total = 0
    for cam in sorted(set(cams)):
        members = [terms[i] for i in range(len(terms)) if cams[i] == cam]
        total = total + sum(members) / len(members)
    return total


def naive_multi_positive(s: torch.Tensor, positives: List[int], rank: torch.Tensor, k1: int) -> torch.Tensor:
    """-(1/|P|) Σ_{u∈P} log(exp(s_u) / Σ_{v∈P∪Q} exp(s_v)), Q = the k1 best of rank outside P."""
    pos_set = set(positives)
    negatives = []
    for j in torch.argsort(rank, descending=True, stable=True).tolist():
        if len(negatives) == k1:
            break
        if j not in pos_set:
            negatives.append(j)
    denominator = torch.logsumexp(s[positives + negatives], dim=0)
    return -sum(s[u] - denominator for u in positives) / len(positives)


def naive_camera_winners(b: torch.Tensor, camera_members: List[torch.Tensor], k2: int) -> List[int]:
    """Per camera the proxy with the highest b (first on ties), then the k2 best of those."""
    winners = [int(members[torch.argmax(b[members])]) for members in camera_members]
    winners.sort(key=lambda j: -float(b[j]))
    return winners[:k2]


def naive_intra(s: torch.Tensor, own_proxy: int, members: torch.Tensor) -> torch.Tensor:
    """-log softmax over the proxies ``members`` of the image's camera, at its own proxy."""
    position = members.tolist().index(own_proxy)
    return -torch.log_softmax(s[members], dim=0)[position]


class NaiveO2CAPHead:
    """Per-image O2CAP head: ``reset``, ``forward`` (reduced losses), ``update``."""

    def __init__(self, losses: Sequence[str], temp: float = 0.07, momentum: float = 0.2, k1: int = 50,
                 k2: int = 3, weight: float = 0.15, negatives: str = "instance",
                 baseline_reduction: str = "mean"):
        self.losses, self.temp, self.momentum = tuple(losses), temp, momentum
        self.baseline_reduction = baseline_reduction
        self.k1, self.k2, self.weight, self.negatives = k1, k2, weight, negatives
        self.uses_proxies = any(n in ("offline", "online", "merge", "intra") for n in self.losses)
        self.uses_clusters = any(n in ("base", "base2") for n in self.losses)
        self.association: List[tuple] = []

    def reset(self, features, clusters, proxies, cams, true_ids: Optional[torch.Tensor] = None):
        num_proxies = int(proxies.max()) + 1
        self.proxy_memory = naive_centroids(features, proxies, num_proxies)
        self.cluster_memory = naive_centroids(features, clusters, int(clusters.max()) + 1)
        proxy_cluster, proxy_cam = [0] * num_proxies, [0] * num_proxies
        for z, rows in naive_members(proxies).items():
            proxy_cluster[z], proxy_cam[z] = int(clusters[rows[0]]), int(cams[rows[0]])
        self.proxy_cluster = torch.tensor(proxy_cluster)
        self.proxy_cam = torch.tensor(proxy_cam)
        self.camera_members = {cam: torch.nonzero(self.proxy_cam == cam).flatten()
                               for cam in sorted(set(proxy_cam))}
        if true_ids is not None:
            self.proxy_true_id = [0] * num_proxies
            for z, rows in naive_members(proxies).items():
                ids = sorted(int(true_ids[i]) for i in rows)
                self.proxy_true_id[z] = max(ids, key=ids.count)  # sorted: smallest on ties

    def forward(self, features, clusters, proxies, cams) -> Dict[str, torch.Tensor]:
        cams_list = [int(c) for c in cams]
        terms: Dict[str, List[torch.Tensor]] = {name: [None] * len(cams_list) for name in self.losses}
        associate = "online" in self.losses or "merge" in self.losses
        self.association = []
        for cam in sorted(set(cams_list)):
            rows = [i for i in range(len(cams_list)) if cams_list[i] == cam]
            if self.uses_proxies:
                s_cam = features[rows] @ self.proxy_memory.t() / self.temp
            if associate:
                proxy_proxy = self.proxy_memory[proxies[rows]] @ self.proxy_memory.t()
            if self.uses_clusters:
                cluster_cam = features[rows] @ self.cluster_memory.t() / self.temp
            for r, i in enumerate(rows):
                y, z = int(clusters[i]), int(proxies[i])
                if self.uses_proxies:
                    s = s_cam[r]
                    instance = (s * self.temp).detach()
                    p1 = torch.nonzero(self.proxy_cluster == y).flatten().tolist()
                if associate:
                    b = self.weight * instance + (1 - self.weight) * proxy_proxy[r]
                    p2 = naive_camera_winners(b, list(self.camera_members.values()), self.k2)
                    self.association.append((i, p1, p2))
                for name in self.losses:
                    if name == "offline":
                        terms[name][i] = naive_multi_positive(s, p1, instance, self.k1)
                    elif name == "online":
                        rank = instance if self.negatives == "instance" else b
                        terms[name][i] = naive_multi_positive(s, p2, rank, self.k1)
                    elif name == "merge":
                        terms[name][i] = naive_multi_positive(s, sorted(set(p1) | set(p2)), instance, self.k1)
                    elif name == "intra":
                        terms[name][i] = naive_intra(s, z, self.camera_members[cam])
                    elif name == "base":
                        terms[name][i] = -torch.log_softmax(cluster_cam[r], dim=0)[y]
                    elif name == "base2":
                        terms[name][i] = naive_multi_positive(cluster_cam[r], [y], cluster_cam[r].detach(), self.k1)
        self.terms = terms
        return {f"loss_{name}": self._reduce(name, terms[name], cams_list) for name in self.losses}

    def _reduce(self, name, terms, cams):
        if name in ("base", "base2") and self.baseline_reduction == "mean":
            return sum(terms) / len(terms)
        return naive_camera_reduction(terms, cams)

    @torch.no_grad()
    def update(self, features, clusters, proxies):
        if self.uses_proxies:
            naive_update_(self.proxy_memory, features, proxies, self.momentum)
        if self.uses_clusters:
            naive_update_(self.cluster_memory, features, clusters, self.momentum)


def naive_association_statistics(associations, true_ids=None, proxy_true_id=None, index=None) -> Dict[str, float]:
    """Eqs. 10-12 averaged over the given images; ``associations`` holds (i, P1, P2) lists."""
    iou, precision, recall, with_truth = 0.0, [0.0] * 3, [0.0] * 3, 0
    for i, p1, p2 in associations:
        p1, p2 = set(p1), set(p2)
        iou += len(p1 & p2) / len(p1 | p2)
        if true_ids is None:
            continue
        identity = int(true_ids[int(index[i])])
        truth = {j for j, t in enumerate(proxy_true_id) if t == identity}
        for r, found in enumerate((p1, p2, p1 | p2)):
            precision[r] += len(found & truth) / len(found)
            if truth:
                recall[r] += len(found & truth) / len(truth)
        with_truth += bool(truth)
    n = len(associations)
    out = {"iou": iou / n}
    if true_ids is not None:
        for r, name in enumerate(("offline", "online", "union")):
            out[f"precision_{name}"] = precision[r] / n
            if with_truth:
                out[f"recall_{name}"] = recall[r] / with_truth
    return out
