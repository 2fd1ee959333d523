"""O2CAP's losses and associations as pure tensor functions (METHODS §2; Wang et al., TIP 2022).

Notation follows the paper: ``f`` the (B, d) L2-normalised batch features, ``K'`` the (Z, d)
camera-aware proxy memory, ``K`` the (C, d) cluster memory of the baselines, ``s = f K'^T / tau``
the proxy scores, ỹ / z̃ / c an image's cluster, proxy and camera. Proxy-level maps are
``proxy_cluster`` (Z,) and ``proxy_cam`` (Z,).

Every loss function returns the per-image terms ℓ_i, shape (B,); :func:`per_camera_mean` turns
them into the batch loss the way the authors' code does. Positive sets are (B, Z) boolean masks
and hard negatives come from ``topk`` over a fixed ``min(K1, Z)`` columns, so a step has only
static shapes: no per-image loop, no ``nonzero`` / ``unique``, no host-device synchronisation.

Nothing here imports fastreid.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

#: Order of the entries returned by :func:`association_statistics` (the paper's Fig. 5).
ASSOCIATION_STATISTICS = ("iou", "precision_offline", "precision_online", "precision_union",
                          "recall_offline", "recall_online", "recall_union")


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


def contrast_with_hard_negatives(scores: torch.Tensor, positives: torch.Tensor,
                                 negative_rank: torch.Tensor, k1: int) -> torch.Tensor:
    """The multi-positive contrastive term shared by Eqs. 3, 4, 6 and 8, per image:

    ``ℓ = -(1/|P|) Σ_{u∈P} log( exp(s_u) / Σ_{v∈P∪Q} exp(s_v) )``,

    with Q the ``k1`` entries outside P that rank highest in ``negative_rank``.

    When an image has fewer than ``k1`` entries outside P, Q is all of them (``k1`` is clamped
    per image to the number available, as the authors' sort-and-slice selection does): the
    top-k runs over ``min(k1, Z)`` columns and the slots that fall on positives are dropped.

    Args:
        scores: (B, Z) ``s``, with gradient.
        positives: (B, Z) bool mask of P; every row must have at least one positive.
        negative_rank: (B, Z) the similarity that picks the hard negatives (no gradient).
        k1: K1.
    """
    neg_inf = float("-inf")
    candidates = negative_rank.masked_fill(positives, neg_inf)
    q_index = candidates.topk(min(k1, scores.shape[1]), dim=1).indices
    # Rank values are finite, so a slot lands on a positive only when the negatives ran out.
    q_scores = scores.gather(1, q_index).masked_fill(positives.gather(1, q_index), neg_inf)
    p_scores = scores.masked_fill(~positives, neg_inf)
    log_denominator = torch.logaddexp(p_scores.logsumexp(dim=1), q_scores.logsumexp(dim=1))
    mean_positive = (scores * positives).sum(dim=1) / positives.sum(dim=1)
    return log_denominator - mean_positive


def offline_positives(clusters: torch.Tensor, proxy_cluster: torch.Tensor) -> torch.Tensor:
    """P1 of Eq. 4 as a (B, Z) mask: every proxy split from the image's cluster ỹ."""
    return proxy_cluster.unsqueeze(0) == clusters.unsqueeze(1)


def offline_loss(scores: torch.Tensor, clusters: torch.Tensor, proxy_cluster: torch.Tensor,
                 k1: int) -> torch.Tensor:
    """L_off, Eq. 4, per image: P1 = the proxies of the image's cluster, Q1 = the K1 proxies
    outside P1 with the highest ``s``.

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        clusters: (B,) ỹ.
        proxy_cluster: (Z,) cluster of each proxy.
        k1: K1 (50).
    """
    return contrast_with_hard_negatives(scores, offline_positives(clusters, proxy_cluster),
                                        scores.detach(), k1)


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


def online_positives(balanced: torch.Tensor, proxy_cam: torch.Tensor, num_cams: int,
                     k2: int) -> torch.Tensor:
    """P2 of Eq. 6 as a (B, Z) mask, by the camera-aware nearest-neighbour criterion: in every
    camera the proxy with the highest balanced similarity (the lowest index on a tie), then the
    K2 highest of these per-camera winners.

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
    # A camera without proxies keeps the out-of-range winner Z, which lands in a dropped column.
    winner = torch.full((batch, num_cams), num_proxies, device=balanced.device).scatter_reduce(
        1, cam_index, torch.where(is_best, proxy_ids, num_proxies), reduce="amin")
    top_cams = best.topk(min(k2, num_cams), dim=1).indices
    chosen = winner.gather(1, top_cams)
    mask = torch.zeros(batch, num_proxies + 1, dtype=torch.bool, device=balanced.device)
    return mask.scatter_(1, chosen, True)[:, :num_proxies]


def online_loss(scores: torch.Tensor, positives: torch.Tensor, negative_rank: torch.Tensor,
                k1: int) -> torch.Tensor:
    """L_on, Eq. 6, per image: P2 from :func:`online_positives`, Q2 = the K1 proxies outside
    P2 ranking highest in ``negative_rank``: ``s`` for the ``instance`` choice (the paper's
    Table III best row), the balanced similarity b for ``balanced`` (the authors' code).

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        positives: (B, Z) P2.
        negative_rank: (B, Z) ``scores.detach()`` or b.
        k1: K1.
    """
    return contrast_with_hard_negatives(scores, positives, negative_rank, k1)


def merge_loss(scores: torch.Tensor, offline: torch.Tensor, online: torch.Tensor,
               k1: int) -> torch.Tensor:
    """L_merge, Eq. 8 (variant O2CAP3), per image: P3 = P1 ∪ P2 and Q3 = the K1 proxies outside
    P3 with the highest ``s`` ("K1-nearest", as Q1 is chosen).

    Args:
        scores: (B, Z) ``f K'^T / tau``.
        offline: (B, Z) P1.
        online: (B, Z) P2.
        k1: K1.
    """
    return contrast_with_hard_negatives(scores, offline | online, scores.detach(), k1)


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
    own = torch.arange(cluster_scores.shape[1], device=clusters.device).unsqueeze(0) == clusters.unsqueeze(1)
    return contrast_with_hard_negatives(cluster_scores, own, cluster_scores.detach(), k1)


def _set_size(mask: torch.Tensor) -> torch.Tensor:
    return mask.sum(dim=1, dtype=torch.float64)


@torch.no_grad()
def association_statistics(offline: torch.Tensor, online: torch.Tensor,
                           true_positives: Optional[torch.Tensor] = None
                           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-batch sums and counts of the association statistics of Eqs. 10-12 (Fig. 5), in the
    order of :data:`ASSOCIATION_STATISTICS`; the epoch average is ``sums / counts``.

    - IoU ``|P1 ∩ P2| / |P1 ∪ P2|``, over every image;
    - precision ``|P_r ∩ P_gt| / |P_r|`` for r = offline P1, online P2, union P3, over every image;
    - recall ``|P_r ∩ P_gt| / |P_gt|``, over the images whose P_gt is not empty (the recall of
      an image whose identity is the majority of no proxy is undefined).

    Without ``true_positives`` the precision and recall entries have count 0.

    Args:
        offline: (B, Z) P1.
        online: (B, Z) P2.
        true_positives: (B, Z) P_gt, the proxies whose majority true identity is the image's.
    """
    union = offline | online
    sums = offline.new_zeros(len(ASSOCIATION_STATISTICS), dtype=torch.float64)
    counts = torch.zeros_like(sums)
    sums[0] = (_set_size(offline & online) / _set_size(union)).sum()
    counts[0] = offline.shape[0]
    if true_positives is not None:
        num_true = _set_size(true_positives)
        has_true = (num_true > 0).to(torch.float64)
        for r, found in enumerate((offline, online, union)):
            hits = _set_size(found & true_positives)
            sums[1 + r] = (hits / _set_size(found)).sum()
            sums[4 + r] = (hits / num_true.clamp(min=1) * has_true).sum()
        counts[1:4] = offline.shape[0]
        counts[4:7] = has_true.sum()
    return sums, counts
