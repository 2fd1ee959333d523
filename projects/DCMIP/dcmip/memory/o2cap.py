"""O2CAP's losses and associations as pure tensor functions (METHODS §2; Wang et al., TIP 2022).

Notation follows the paper: ``f`` the (B, d) L2-normalised batch features, ``K'`` the (Z, d)
camera-aware proxy memory, ``K`` the (C, d) cluster memory of the baselines, ``s = f K'^T / tau``
the proxy scores, ỹ / z̃ / c an image's cluster, proxy and camera. Proxy-level maps are
``proxy_cluster`` (Z,) and ``proxy_cam`` (Z,).

Every loss function returns the per-image terms ℓ_i, shape (B,); :func:`per_camera_mean` turns
them into the batch loss the way the authors' code does.

Positive sets (P1, P2, P3 of the paper) are :class:`ProxySet` s: a few padded indices per image
rather than (B, Z) masks, because a positive set holds at most one proxy per camera (P1) or K2
proxies (P2). The contrastive terms then gather the |P| + K1 scores they need, and the only
(B, Z)-sized work of a loss is the top-K1 negative search. Every shape is fixed by the inputs'
shapes and the hyper-parameters: no per-image loop, no ``nonzero`` / ``unique``, no
host-device synchronisation.

Nothing here imports fastreid.
"""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from .updates import occurrence_index

#: Order of the entries returned by :func:`association_statistics` (the paper's Fig. 5).
ASSOCIATION_STATISTICS = ("iou", "precision_offline", "precision_online", "precision_union",
                          "recall_offline", "recall_online", "recall_union")


class ProxySet(NamedTuple):
    """One set of proxies (or clusters) per row, padded to a common width M.

    ``index`` (R, M) holds the members in the slots where ``valid`` (R, M) is True. Slot 0 is
    always valid and every invalid slot repeats the index of slot 0, so scattering over
    ``index`` only ever touches members; members are distinct across valid slots.
    """
    index: torch.Tensor
    valid: torch.Tensor

    def size(self) -> torch.Tensor:
        """(R,) the number of members of each row."""
        return self.valid.sum(dim=1)


def per_camera_mean(loss_per_image: torch.Tensor, cams: torch.Tensor, num_cams: int) -> torch.Tensor:
    """Batch reduction of every O2CAP loss (METHODS §2, and Eq. 9 as printed): group the batch
    by camera and sum, over the cameras present, the mean of ℓ over that camera's images.

    Args:
        loss_per_image: (B,) ℓ_i.
        cams: (B,) camera of each image, in [0, num_cams).
        num_cams: number of cameras of the dataset; a fixed size keeps the reduction sync-free.
    """
    sums = loss_per_image.new_zeros(num_cams).index_add(0, cams, loss_per_image)
    counts = loss_per_image.new_zeros(num_cams).index_add(0, cams, torch.ones_like(loss_per_image))
    # Absent cameras have sum 0 and count 0: the clamp makes them contribute 0 instead of NaN.
    return (sums / counts.clamp(min=1)).sum()


def contrast_with_hard_negatives(scores: torch.Tensor, positives: ProxySet,
                                 negative_rank: torch.Tensor, k1: int) -> torch.Tensor:
    """The multi-positive contrastive term shared by Eqs. 3, 4, 6 and 8, per image:

    ``ℓ = -(1/|P|) Σ_{u∈P} log( exp(s_u) / Σ_{v∈P∪Q} exp(s_v) )``,

    with Q the ``k1`` entries outside P that rank highest in ``negative_rank``.

    When an image has fewer than ``k1`` entries outside P, Q is all of them (``k1`` is clamped
    per image to the number available, as the authors' sort-and-slice selection does): the
    top-k runs over ``min(k1, Z)`` columns and the slots that fall on positives are dropped.

    Args:
        scores: (B, Z) ``s``, with gradient.
        positives: P, a :class:`ProxySet` over the Z columns.
        negative_rank: (B, Z) finite similarities that pick the hard negatives (no gradient).
        k1: K1.
    """
    neg_inf = float("-inf")
    candidates = negative_rank.scatter(1, positives.index, neg_inf)
    q_rank, q_index = candidates.topk(min(k1, scores.shape[1]), dim=1)
    # Ranks are finite, so a slot holds -inf only when it fell on a positive (negatives ran out).
    valid = torch.cat([positives.valid, q_rank != neg_inf], dim=1)
    logits = scores.gather(1, torch.cat([positives.index, q_index], dim=1)).masked_fill(~valid, neg_inf)
    num_pos = positives.index.shape[1]
    mean_positive = logits[:, :num_pos].masked_fill(~positives.valid, 0.0).sum(dim=1) / positives.size()
    return logits.logsumexp(dim=1) - mean_positive


def cluster_proxy_table(proxy_cluster: torch.Tensor, num_clusters: int) -> ProxySet:
    """(C, M) the proxies of every cluster, M = the most proxies of one cluster (at most the
    number of cameras). Built once per epoch: it reads M back to the host."""
    slot = occurrence_index(proxy_cluster)
    width = int(slot.max()) + 1
    index = torch.zeros(num_clusters, width, dtype=torch.long, device=proxy_cluster.device)
    index[proxy_cluster, slot] = torch.arange(len(proxy_cluster), device=proxy_cluster.device)
    valid = torch.zeros(num_clusters, width, dtype=torch.bool, device=proxy_cluster.device)
    valid[proxy_cluster, slot] = True
    return ProxySet(torch.where(valid, index, index[:, :1]), valid)


def offline_positives(clusters: torch.Tensor, table: ProxySet) -> ProxySet:
    """P1 of Eq. 4: every proxy split from the image's cluster ỹ.

    Args:
        clusters: (B,) ỹ.
        table: :func:`cluster_proxy_table` of the epoch.
    """
    return ProxySet(table.index[clusters], table.valid[clusters])


@torch.no_grad()
def balanced_similarity(features: torch.Tensor, memory: torch.Tensor, proxies: torch.Tensor,
                        weight: float) -> torch.Tensor:
    """The instance-proxy balanced similarity of Eq. 5 to every proxy j, (B, Z), no gradient:

    ``b_j = w f·K'[j] + (1-w) K'[z̃]·K'[j]``.

    Both terms are linear in K'[j], so it is one matmul: ``(w f + (1-w) K'[z̃]) K'^T``.

    Args:
        features: (B, d) f.
        memory: (Z, d) K'.
        proxies: (B,) z̃, the image's own proxy.
        weight: w (0.15).
    """
    query = weight * features.detach().to(memory.dtype) + (1.0 - weight) * memory[proxies]
    return query @ memory.t()


@torch.no_grad()
def online_positives(balanced: torch.Tensor, proxy_cam: torch.Tensor, num_cams: int,
                     k2: int) -> ProxySet:
    """P2 of Eq. 6, by the camera-aware nearest-neighbour criterion: in every camera the proxy
    with the highest balanced similarity (the lowest index on a tie), then the K2 highest of
    these per-camera winners, best first.

    Cameras without proxies never win; when fewer than K2 cameras have proxies, P2 holds one
    proxy per camera that has any.

    Args:
        balanced: (B, Z) b of :func:`balanced_similarity`.
        proxy_cam: (Z,) camera of each proxy, in [0, num_cams).
        num_cams: number of cameras.
        k2: K2 (3 Market-1501 / MSMT17, 2 DukeMTMC-reID, 8 VeRi-776).
    """
    batch, num_proxies = balanced.shape
    cam_index = proxy_cam.unsqueeze(0).expand(batch, num_proxies)
    best = balanced.new_full((batch, num_cams), float("-inf")).scatter_reduce(
        1, cam_index, balanced, reduce="amax")
    is_best = balanced == best.gather(1, cam_index)
    proxy_ids = torch.arange(num_proxies, device=balanced.device).expand(batch, num_proxies)
    winner = torch.full((batch, num_cams), num_proxies, device=balanced.device).scatter_reduce(
        1, cam_index, torch.where(is_best, proxy_ids, num_proxies), reduce="amin")
    top_value, top_cam = best.topk(min(k2, num_cams), dim=1)
    # Slot 0 is the best camera overall, which has proxies; empty cameras come last.
    valid = top_value != float("-inf")
    index = winner.gather(1, top_cam)
    return ProxySet(torch.where(valid, index, index[:, :1]), valid)


def merged_positives(offline: ProxySet, online: ProxySet, clusters: torch.Tensor,
                     proxy_cluster: torch.Tensor) -> ProxySet:
    """P3 = P1 ∪ P2 of Eq. 8: P1's slots, then P2's slots whose proxy is not in P1 (P1 holds
    every proxy of cluster ỹ, so a P2 proxy is in P1 exactly when its cluster is ỹ)."""
    new_online = online.valid & (proxy_cluster[online.index] != clusters.unsqueeze(1))
    index = torch.cat([offline.index, torch.where(new_online, online.index, offline.index[:, :1])], dim=1)
    return ProxySet(index, torch.cat([offline.valid, new_online], dim=1))


def offline_loss(scores: torch.Tensor, offline: ProxySet, k1: int) -> torch.Tensor:
    """L_off, Eq. 4, per image: P1 = the proxies of the image's cluster
    (:func:`offline_positives`), Q1 = the K1 proxies outside P1 with the highest ``s``.

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        offline: P1.
        k1: K1 (50).
    """
    return contrast_with_hard_negatives(scores, offline, scores.detach(), k1)


def online_loss(scores: torch.Tensor, online: ProxySet, negative_rank: torch.Tensor,
                k1: int) -> torch.Tensor:
    """L_on, Eq. 6, per image: P2 from :func:`online_positives`, Q2 = the K1 proxies outside
    P2 ranking highest in ``negative_rank``: ``s`` for the ``instance`` choice (the paper's
    Table III best row), the balanced similarity b for ``balanced`` (the authors' code).

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        online: P2.
        negative_rank: (B, Z) ``scores.detach()`` or b.
        k1: K1.
    """
    return contrast_with_hard_negatives(scores, online, negative_rank, k1)


def merge_loss(scores: torch.Tensor, merged: ProxySet, k1: int) -> torch.Tensor:
    """L_merge, Eq. 8 (variant O2CAP3), per image: P3 = P1 ∪ P2 (:func:`merged_positives`) and
    Q3 = the K1 proxies outside P3 with the highest ``s`` ("K1-nearest", as Q1 is chosen).

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        merged: P3.
        k1: K1.
    """
    return contrast_with_hard_negatives(scores, merged, scores.detach(), k1)


def intra_loss(scores: torch.Tensor, proxies: torch.Tensor, cams: torch.Tensor,
               proxy_cam: torch.Tensor) -> torch.Tensor:
    """L_intra, Eq. 9 (CAP's intra-camera loss), per image: cross entropy of a softmax over the
    proxies of the image's own camera only, target its own proxy z̃. (Eq. 9's per-camera
    normalisation 1/N_c is :func:`per_camera_mean`.)

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        proxies: (B,) z̃.
        cams: (B,) c.
        proxy_cam: (Z,) camera of each proxy.
    """
    other_camera = proxy_cam.unsqueeze(0) != cams.unsqueeze(1)
    return F.cross_entropy(scores.masked_fill(other_camera, float("-inf")), proxies, reduction="none")


def base_loss(cluster_scores: torch.Tensor, clusters: torch.Tensor) -> torch.Tensor:
    """L_base, Eq. 2 (Baseline1), per image: cross entropy of ``f K^T / tau`` over all clusters,
    target ỹ.

    Args:
        cluster_scores: (B, C) scores against the cluster memory K.
        clusters: (B,) ỹ.
    """
    return F.cross_entropy(cluster_scores, clusters, reduction="none")


def base2_loss(cluster_scores: torch.Tensor, clusters: torch.Tensor, k1: int) -> torch.Tensor:
    """L_base2, Eq. 3 (Baseline2), per image: softmax over the own cluster ỹ and Q0, the K1
    other clusters with the highest score; target ỹ.

    Args:
        cluster_scores: (B, C) scores against the cluster memory K.
        clusters: (B,) ỹ.
        k1: K1.
    """
    own = ProxySet(clusters.unsqueeze(1), torch.ones_like(clusters, dtype=torch.bool).unsqueeze(1))
    return contrast_with_hard_negatives(cluster_scores, own, cluster_scores.detach(), k1)


@torch.no_grad()
def association_statistics(offline: ProxySet, online: ProxySet, clusters: torch.Tensor,
                           proxy_cluster: torch.Tensor, true_ids: Optional[torch.Tensor] = None,
                           proxy_true_id: Optional[torch.Tensor] = None,
                           num_true: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-batch sums and counts of the association statistics of Eqs. 10-12 (Fig. 5), in the
    order of :data:`ASSOCIATION_STATISTICS`; the epoch average is ``sums / counts``.

    - IoU ``|P1 ∩ P2| / |P1 ∪ P2|``, over every image;
    - precision ``|P_r ∩ P_gt| / |P_r|`` for r = offline P1, online P2, union P3, over every image;
    - recall ``|P_r ∩ P_gt| / |P_gt|``, over the images whose P_gt is not empty (the recall of
      an image whose identity is the majority of no proxy is undefined).

    P_gt is the set of proxies whose majority true identity is the image's (the paper's
    definition). Without true identities the precision and recall entries have count 0.

    Args:
        offline: P1.
        online: P2.
        clusters: (B,) ỹ.
        proxy_cluster: (Z,) cluster of each proxy.
        true_ids: (B,) the images' true identities.
        proxy_true_id: (Z,) the majority true identity of each proxy.
        num_true: (B,) |P_gt| of each image.
    """
    def count(mask: torch.Tensor) -> torch.Tensor:
        return mask.sum(dim=1, dtype=torch.float64)

    online_in_offline = online.valid & (proxy_cluster[online.index] == clusters.unsqueeze(1))
    both = count(online_in_offline)
    size_off, size_on = count(offline.valid), count(online.valid)
    size_union = size_off + size_on - both
    sums = torch.zeros(len(ASSOCIATION_STATISTICS), dtype=torch.float64, device=clusters.device)
    counts = torch.zeros_like(sums)
    sums[0] = (both / size_union).sum()
    counts[0] = len(clusters)
    if true_ids is not None:
        is_true_off = offline.valid & (proxy_true_id[offline.index] == true_ids.unsqueeze(1))
        is_true_on = online.valid & (proxy_true_id[online.index] == true_ids.unsqueeze(1))
        hits_off, hits_on = count(is_true_off), count(is_true_on)
        hits_union = hits_off + hits_on - count(is_true_on & online_in_offline)
        has_true = num_true > 0
        for r, (hits, size) in enumerate(((hits_off, size_off), (hits_on, size_on),
                                          (hits_union, size_union))):
            sums[1 + r] = (hits / size).sum()
            sums[4 + r] = torch.where(has_true, hits / num_true.clamp(min=1), 0.0).sum()
        counts[1:4] = len(clusters)
        counts[4:7] = has_true.sum()
    return sums, counts
