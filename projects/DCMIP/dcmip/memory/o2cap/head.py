"""The camera-aware proxy memory head: O2CAP and every variant of its Table II (METHODS §2).

``UNSUP.O2CAP.LOSSES`` picks the summed losses, which decides the memories the head keeps:

- ``offline`` (L_off, Eq. 4), ``online`` (L_on, Eq. 6), ``merge`` (L_merge, Eq. 8) and
  ``intra`` (L_intra, Eq. 9) use the proxy memory K' (Z × d);
- ``base`` (L_base, Eq. 2) and ``base2`` (L_base2, Eq. 3) use a cluster memory K (C × d).

Both memories are rebuilt from the epoch-start features at every epoch and move by the same
momentum rule (Eq. 1, per image in batch order), K' with the proxy labels and K with the
cluster labels. The losses are the pure functions of :mod:`dcmip.memory.o2cap.functional`.
"""
from typing import Dict, Sequence, Tuple

import torch
import torch.distributed as dist

from ...structures import PseudoLabels
from ..base import MEMORY_HEAD_REGISTRY, MemoryHead
from .functional import (ASSOCIATION_STATISTICS, ProxySet, association_statistics, balanced_query,
                         balanced_similarity, base2_loss, base_loss, contrastive_terms, distinct_proxy_queries,
                         group_table, intra_loss, memory_scores, merged_positives, top_columns,
                         offline_positives, online_positives, camera_counts, camera_mean_weights)
from ..updates import batch_momentum_update_, normalized_centroids

PROXY_LOSSES = ("offline", "online", "merge", "intra")
CLUSTER_LOSSES = ("base", "base2")
ONLINE_NEGATIVES = ("instance", "balanced")
BASELINE_REDUCTIONS = ("mean", "per_camera")


def _check_losses(losses: Sequence[str]) -> Tuple[str, ...]:
    allowed = PROXY_LOSSES + CLUSTER_LOSSES
    losses = tuple(losses)
    if not losses or any(name not in allowed for name in losses) or len(set(losses)) != len(losses):
        raise ValueError(f"UNSUP.O2CAP.LOSSES={losses!r}: give a non-empty list of distinct names "
                         f"from {allowed}")
    return losses


def _check_range(key: str, value, low, high=None, integer: bool = False):
    wrong_type = integer and (isinstance(value, bool) or not isinstance(value, int))
    if wrong_type or value < low or (high is not None and value > high):
        kind = "an integer" if integer else "a number"
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{key}={value!r}: must be {kind} {bound}")
    return value


def _majority_label(groups: torch.Tensor, labels: torch.Tensor, num_groups: int,
                    num_labels: int) -> torch.Tensor:
    """(num_groups,) the most frequent label in [0, num_labels) of each group (the smallest
    one on a tie). Every group must have members."""
    pairs, counts = torch.unique(groups * num_labels + labels, return_counts=True)
    pair_group = pairs // num_labels
    top = torch.zeros(num_groups, dtype=counts.dtype, device=counts.device).scatter_reduce(
        0, pair_group, counts, reduce="amax")
    candidate = torch.where(counts == top[pair_group], pairs % num_labels, num_labels)
    return torch.full((num_groups,), num_labels, dtype=pairs.dtype, device=pairs.device).scatter_reduce(
        0, pair_group, candidate, reduce="amin")


@MEMORY_HEAD_REGISTRY.register()
class CameraAwareProxyMemory(MemoryHead):
    """Camera-aware proxies (one per (cluster, camera) pair) and O2CAP's losses.

    Config: ``UNSUP.MEMORY.TEMP`` (tau, 0.07), ``UNSUP.MEMORY.MOMENTUM`` (mu, 0.2) and the
    ``UNSUP.O2CAP`` keys ``LOSSES``, ``HARD_NEGATIVES`` (K1), ``ONLINE_POSITIVES`` (K2),
    ``BALANCE_WEIGHT`` (w), ``ONLINE_NEGATIVES``, ``BASELINE_REDUCTION``.

    When the online association runs (``online`` or ``merge``), the head keeps each step's
    online positive sets on the device and :meth:`epoch_statistics` returns the epoch averages
    of the association statistics of Fig. 5 over them (precision and recall only when the
    pseudo labels carry true identities).
    """

    def __init__(self, cfg):
        super().__init__(cfg)
        o2cap = cfg.UNSUP.O2CAP
        self.losses = _check_losses(o2cap.LOSSES)
        self.k1 = _check_range("UNSUP.O2CAP.HARD_NEGATIVES", o2cap.HARD_NEGATIVES, 1, integer=True)
        self.k2 = _check_range("UNSUP.O2CAP.ONLINE_POSITIVES", o2cap.ONLINE_POSITIVES, 1, integer=True)
        self.balance_weight = _check_range("UNSUP.O2CAP.BALANCE_WEIGHT", o2cap.BALANCE_WEIGHT, 0.0, 1.0)
        self.online_negatives = o2cap.ONLINE_NEGATIVES
        if self.online_negatives not in ONLINE_NEGATIVES:
            raise ValueError(f"UNSUP.O2CAP.ONLINE_NEGATIVES={self.online_negatives!r}: choose one of "
                             f"{ONLINE_NEGATIVES}")
        self.baseline_reduction = o2cap.BASELINE_REDUCTION
        if self.baseline_reduction not in BASELINE_REDUCTIONS:
            raise ValueError(f"UNSUP.O2CAP.BASELINE_REDUCTION={self.baseline_reduction!r}: choose one of "
                             f"{BASELINE_REDUCTIONS}")
        _check_range("UNSUP.MEMORY.MOMENTUM", self.momentum, 0.0, 1.0)
        if not self.temp > 0:
            raise ValueError(f"UNSUP.MEMORY.TEMP={self.temp!r}: must be a number > 0")

        self.uses_proxies = any(name in PROXY_LOSSES for name in self.losses)
        self.uses_clusters = any(name in CLUSTER_LOSSES for name in self.losses)
        self.associates_online = "online" in self.losses or "merge" in self.losses
        # The contrastive losses configured -> the similarity ranking their hard negatives:
        # L_off (Eq. 4) and L_merge (Eq. 8) by s, L_on (Eq. 6) by ONLINE_NEGATIVES.
        self.rankings = {name: ranking for name, ranking in
                         (("offline", "instance"), ("online", self.online_negatives), ("merge", "instance"))
                         if name in self.losses}
        self.num_cams = 0
        self.cameras_filled = None
        # Non-persistent: every memory is rebuilt from the epoch-start features (METHODS §1).
        for name in ("proxy_memory", "proxy_cluster", "proxy_cam", "cluster_proxies", "cluster_proxies_valid",
                     "camera_proxies", "camera_proxies_valid", "cluster_memory", "true_ids", "proxy_true_id",
                     "num_true"):
            self.register_buffer(name, torch.zeros(0), persistent=False)
        # Per step (clusters ỹ, P2 index, P2 valid, dataset indices or None): the Fig. 5
        # statistics are computed from them once per epoch, in one batch, rather than in ~40
        # small operations per step.
        self.associations = []

    @torch.no_grad()
    def reset(self, pseudo: PseudoLabels) -> None:
        """Rebuild the memories from the epoch-start features: each entry is the normalised
        mean of its images' features. Also resets the association statistics."""
        device = self.proxy_memory.device
        # Half-precision features (AMP extraction) are promoted: the memory accumulates updates.
        dtype = torch.promote_types(pseudo.features.dtype, torch.float32)
        features = pseudo.features.to(device, dtype)
        self.num_cams = int(pseudo.cams.max()) + 1
        if self.uses_proxies:
            self.proxy_memory = normalized_centroids(features, pseudo.proxies.to(device), pseudo.num_proxies)
            self.proxy_cluster = pseudo.proxy_to_cluster().to(device)
            self.proxy_cam = pseudo.proxy_to_cam().to(device)
            self.cluster_proxies, self.cluster_proxies_valid = group_table(self.proxy_cluster, pseudo.num_clusters)
            self.camera_proxies, self.camera_proxies_valid = group_table(self.proxy_cam, self.num_cams)
            # Known on the host once per epoch, it spares every step the empty-camera masking.
            self.cameras_filled = int(self.camera_proxies_valid[:, 0].sum())
        if self.uses_clusters:
            self.cluster_memory = normalized_centroids(features, pseudo.clusters.to(device),
                                                       pseudo.num_clusters)
        if self.associates_online and pseudo.true_ids is not None:
            # Identities renumbered 0..T-1; per proxy its majority identity (Fig. 5's P_gt), per
            # identity the number of proxies it is the majority of (|P_gt|).
            identities, self.true_ids = torch.unique(pseudo.true_ids.to(device), return_inverse=True)
            self.proxy_true_id = _majority_label(pseudo.proxies.to(device), self.true_ids,
                                                 pseudo.num_proxies, len(identities))
            self.num_true = torch.bincount(self.proxy_true_id, minlength=len(identities))
        else:
            self.true_ids = torch.zeros(0, dtype=torch.long, device=device)
        self.associations = []

    def forward(self, features: torch.Tensor, batch: Dict) -> Dict[str, torch.Tensor]:
        """The configured losses of the batch against the memories as they are before this
        step's :meth:`update`, each reduced by :func:`per_camera_mean`, except the baselines'
        under ``BASELINE_REDUCTION`` "mean": the plain batch mean of the authors' baseline
        memory (O2CAP ``spcl/models/hm_for_baseline.py``, ``HybridMemory.forward``:
        ``F.cross_entropy(inputs, targets)``)."""
        cams, clusters, proxies = batch["camids"], batch["clusters"], batch["proxies"]
        # (loss names) -> their (L, B) per-image terms, kept stacked as computed.
        losses = {}
        if self.uses_proxies:
            memory = self.proxy_memory
            f = features if features.dtype == memory.dtype else features.to(memory.dtype)
            # Without L_intra every proxy loss reads a few scores per image: sparse backward.
            sparse = "intra" not in self.losses
            groups = batch.get("groups", {}).get("proxies")
            if self.associates_online and groups is not None:
                # Eq. 5's proxy half from one product row per distinct proxy, in the scores' matmul.
                queries = distinct_proxy_queries(memory, groups.labels, self.balance_weight)
                scores, similarities = memory_scores(f, memory, self.temp, queries, sparse)
            elif self.associates_online:
                scores, balanced = memory_scores(f, memory, self.temp,
                                                 balanced_query(f, memory, proxies, self.balance_weight), sparse)
            else:
                scores = memory_scores(f, memory, self.temp, sparse=sparse)
            # The hard-negative search over s first, while the (B, Z) scores are still in cache.
            candidates, count = {}, self._candidate_count("instance")
            if count:
                candidates["instance"] = top_columns(scores.detach(), count)
            if self.associates_online and groups is not None:
                balanced = balanced_similarity(scores.detach(), similarities, groups.inverse, self.temp,
                                               self.balance_weight)
            if "intra" in self.losses:
                losses[("loss_intra",)] = intra_loss(scores, proxies, cams, self.proxy_cam).unsqueeze(0)
            if "offline" in self.losses or self.associates_online:
                offline = offline_positives(clusters, ProxySet(self.cluster_proxies, self.cluster_proxies_valid))
            if self.associates_online:
                online = online_positives(balanced, ProxySet(self.camera_proxies, self.camera_proxies_valid),
                                          self.k2, self.cameras_filled)
                self.associations.append((clusters, online.index, online.valid, batch.get("index")))
            # The positive set of each contrastive loss: L_off (Eq. 4), L_on (Eq. 6), L_merge
            # (Eq. 8), each a contrast_with_hard_negatives term.
            positive_sets = {}
            if "offline" in self.losses:
                positive_sets["offline"] = offline
            if "online" in self.losses:
                positive_sets["online"] = online
            if "merge" in self.losses:
                positive_sets["merge"] = merged_positives(offline, online, clusters, self.proxy_cluster)
            # One top-k search and one gather per ranking similarity serve every loss ranked by it.
            for ranking in dict.fromkeys(self.rankings.values()):
                chosen = {name: positive_sets[name] for name, by in self.rankings.items() if by == ranking}
                if ranking not in candidates:
                    candidates[ranking] = top_columns(balanced, self._candidate_count(ranking))
                terms = contrastive_terms(scores, tuple(chosen.values()), candidates[ranking], self.k1)
                losses[tuple(f"loss_{name}" for name in chosen)] = terms
        if self.uses_clusters:
            memory = self.cluster_memory
            cluster_scores = memory_scores(features.to(memory.dtype), memory, self.temp)
            if "base" in self.losses:
                losses[("loss_base",)] = base_loss(cluster_scores, clusters).unsqueeze(0)
            if "base2" in self.losses:
                losses[("loss_base2",)] = base2_loss(cluster_scores, clusters, self.k1).unsqueeze(0)
        plain_mean = {("loss_base",), ("loss_base2",)} if self.baseline_reduction == "mean" else set()
        reduced = {names[0]: terms.mean() for names, terms in losses.items() if names in plain_mean}
        per_camera = [names for names in losses if names not in plain_mean]
        if per_camera:
            # The per-camera losses in one reduction (a few operations instead of a few per loss).
            terms = torch.cat([losses[names] for names in per_camera]) if len(per_camera) > 1 else losses[per_camera[0]]
            weights, world_size = self._camera_mean_weights(batch, terms.dtype)
            values = terms @ weights
            names = [name for block in per_camera for name in block]
            reduced.update(zip(names, (world_size * values if world_size > 1 else values).unbind()))
        return {name: reduced[name] for names in losses for name in names}

    def _candidate_count(self, ranking: str) -> int:
        """How many best-ranked proxies :func:`hard_negative_candidates` takes for the losses
        whose negatives ``ranking`` ranks (0 if none): K1 + the widest of their positive sets,
        known before the sets are formed (P1 the most proxies of a cluster, P2 one proxy per
        camera of the K2 best, P3 both), so the search can run while the scores are in cache."""
        p1, p2 = self.cluster_proxies.shape[1], min(self.k2, self.camera_proxies.shape[0])
        widths = {"offline": p1, "online": p2, "merge": p1 + p2}
        ranked = [widths[name] for name, by in self.rankings.items() if by == ranking]
        return min(self.k1 + max(ranked), len(self.proxy_memory)) if ranked else 0

    def _camera_mean_weights(self, batch: Dict, dtype: torch.dtype):
        """(B,) the weights that make ``terms @ weights`` :func:`per_camera_mean` over the
        global batch, and the number of processes sharing it.

        In one process they are the collation's (the batch grouped by camera on the host), or
        :func:`camera_mean_weights` of the batch's cameras. Under DDP each process holds a
        slice of the batch and DDP averages the processes' gradients. A plain mean survives
        that; the per-camera mean does not (a slice's camera counts are not the batch's). So
        the counts are summed over the processes and each process's loss is scaled by the
        world size: the averaged gradient is then the single-process gradient of the whole
        batch, for any number of processes.
        """
        cams = batch["camids"]
        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            groups = batch.get("groups", {}).get("camids")
            if groups is not None:
                return groups.mean_weights.to(dtype), 1
            return camera_mean_weights(cams, self.num_cams, dtype=dtype), 1
        counts = camera_counts(cams, self.num_cams)
        dist.all_reduce(counts)  # an asynchronous device op under NCCL: no host sync
        return camera_mean_weights(cams, self.num_cams, counts, dtype), dist.get_world_size()

    @torch.no_grad()
    def update(self, features: torch.Tensor, batch: Dict) -> None:
        """Eq. 1 per image in batch order, exactly, in vectorised rounds
        (:func:`~dcmip.memory.updates.batch_momentum_update_`)."""
        if self.uses_proxies:
            batch_momentum_update_(self.proxy_memory, features, batch, "proxies", self.momentum)
        if self.uses_clusters:
            batch_momentum_update_(self.cluster_memory, features, batch, "clusters", self.momentum)

    @torch.no_grad()
    def epoch_statistics(self) -> Dict[str, float]:
        """Epoch averages of the Fig. 5 statistics (Eqs. 10-12) over the trained images, keyed
        ``association/<name>``; statistics without data are left out. Resets the accumulators."""
        associations, self.associations = self.associations, []
        table = ProxySet(self.cluster_proxies, self.cluster_proxies_valid)
        sums = torch.zeros(len(ASSOCIATION_STATISTICS), dtype=torch.float64)
        counts = torch.zeros_like(sums)
        # The steps with dataset indices (the truth is known for them) and those without.
        for with_index in (True, False):
            steps = [step for step in associations if (step[3] is not None) == with_index]
            if not steps:
                continue
            clusters, online_index, online_valid = (torch.cat(parts) for parts in list(zip(*steps))[:3])
            truth = {}
            if with_index and self.true_ids.numel():
                true_ids = self.true_ids[torch.cat([step[3] for step in steps])]
                truth = dict(true_ids=true_ids, proxy_true_id=self.proxy_true_id, num_true=self.num_true[true_ids])
            step_sums, step_counts = association_statistics(offline_positives(clusters, table),
                                                            ProxySet(online_index, online_valid), clusters,
                                                            self.proxy_cluster, **truth)
            sums += step_sums.cpu()
            counts += step_counts.cpu()
        return {f"association/{name}": total / count
                for name, total, count in zip(ASSOCIATION_STATISTICS, sums.tolist(), counts.tolist()) if count > 0}
