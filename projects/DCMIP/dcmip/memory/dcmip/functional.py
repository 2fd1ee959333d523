"""DCMIP (Zou et al., ICCV 2023): discrepant cluster proxies and multi-instance proxies (METHODS §4).

Pure tensor functions, free of fastreid, so that they can be tested against the per-image
reference in ``tests/naive_dcmip.py``; :mod:`dcmip.memory.dcmip.head` is the stateful head
around them.

Memories (``C`` clusters, ``d`` the embedding size, ``K`` = 16 instances per cluster):

- ``proxies`` (2C, d): the discrepant cluster proxies ``[A; B]``, row ``y`` is ``A[y]`` and row
  ``C + y`` is ``B[y]``. Both start at the cluster's normalised centroid; A follows individual
  images (sequential or hardest momentum update, :mod:`dcmip.memory.updates`), B the batch mean
  of the cluster (:func:`update_proxy_b_`).
- ``instances`` (K C, d): the multi-instance proxies of stage 2, entry ``y + k C`` for
  ``k = 0..K-1``, so that ``instances.view(K, C, d)[k, y]`` is the k-th instance of cluster y.
  They live in an ``instance_buffer`` (K C + 1, d) whose last row is scratch space for the
  replacement (:func:`replace_instances_`); ``instances`` is ``instance_buffer[:-1]``.

Every function runs in a fixed number of vectorised tensor operations per step: no loop over
images or clusters, no host-device synchronisation, no data-dependent shape (METHODS §5).
Every memory entry is written by exactly one batch position (the other positions add exact
zeros, write identical values, or write to scratch space), so the updates are deterministic
on every device and identical across DDP ranks.
"""
from typing import Optional

import torch
import torch.nn.functional as F


def cluster_contrast_loss(features: torch.Tensor, proxies: torch.Tensor, labels: torch.Tensor,
                          temp: float, margin: float) -> torch.Tensor:
    """The discrepant cluster contrastive loss L_cc (METHODS §4, stages 1 and 2).

    ``L_cc = 0.5 (CE(B-half, y) + relu(CE(A-half, y) - r))``: the logits ``f · [A; B]ᵀ / τ``
    are split into the A half and the B half, each a softmax over the C clusters, and each CE
    is the batch mean. The margin r relaxes the A term: A tracks single (hard) images, so its
    loss is not pushed below r.

    Args:
        features: (B, d) L2-normalised embeddings (differentiated).
        proxies: (2C, d) ``[A; B]`` (not differentiated).
        labels: (B,) cluster of each image, in [0, C).
        temp: τ (0.05).
        margin: r (0.2).
    """
    num_clusters = proxies.shape[0] // 2
    # Scaling the (B, d) features rather than the (B, 2C) logits keeps 1/τ off the big tensors.
    logits = (features / temp) @ proxies.detach().t().to(features.dtype)
    loss_a = F.cross_entropy(logits[:, :num_clusters], labels)
    loss_b = F.cross_entropy(logits[:, num_clusters:], labels)
    return 0.5 * (loss_b + F.relu(loss_a - margin))


def instance_loss(features: torch.Tensor, instances: torch.Tensor, labels: torch.Tensor,
                  num_clusters: int, temp: float) -> torch.Tensor:
    """The multi-instance contrastive loss L_ins (METHODS §4, stage 2).

    Logits ``f · Iᵀ / τ`` viewed as (B, K, C). Each cluster gets one logit: the image's own
    cluster its hardest positive (the minimum over its K instances), every other cluster its
    hardest negative (the maximum over its K instances). ``L_ins = CE(those logits, y)``,
    batch mean.

    Args:
        features: (B, d) L2-normalised embeddings (differentiated).
        instances: (K C, d) multi-instance proxies, entry ``y + k C`` (not differentiated).
        labels: (B,) cluster of each image, in [0, C).
        num_clusters: C.
        temp: τ (0.05).
    """
    selected = _HardestInstanceLogits.apply(features / temp, instances.detach().to(features.dtype), labels,
                                            num_clusters)
    return F.cross_entropy(selected, labels)


class _HardestInstanceLogits(torch.autograd.Function):
    """``(f / τ) · Iᵀ`` viewed as (B, K, C), reduced to (B, C) cluster logits: the own
    cluster's minimum over its K instances, every other cluster's maximum.

    One function from the features to the selected logits, so that the (B, K C) logits stay
    private to the forward: only one instance per (image, cluster) is selected, so the
    backward sums ``Σ_c g_bc I[selected_bc]`` straight from those C instance rows
    (``embedding_bag``), never through a (B, K C) gradient and its (B, K C) x (K C, d)
    product. On a tie the first instance attaining the extremum is the selected one; exact
    ties occur between duplicated instances, i.e. identical vectors, so any choice gives the
    same gradient.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, instances: torch.Tensor, labels: torch.Tensor,
                num_clusters: int) -> torch.Tensor:
        logits = features @ instances.t()
        batch = logits.shape[0]
        per_cluster = logits.view(batch, -1, num_clusters)  # [b, k, c] = entry c + k C
        per_instance = per_cluster.shape[1]
        k = torch.arange(per_instance, device=labels.device)
        selected = per_cluster.amax(dim=1)
        selected.scatter_(1, labels.unsqueeze(1),
                          logits.gather(1, labels.unsqueeze(1) + num_clusters * k).amin(dim=1, keepdim=True))
        # The first k whose logit is the selected one, as K - max_k (K - k) [logit_k == selected]:
        # max(dim) with indices over the strided k axis costs ~10x an amax.
        weight_dtype = torch.uint8 if per_instance < 256 else torch.int32
        hit = (per_cluster == selected.unsqueeze(1)).to(weight_dtype)
        first = per_instance - hit.mul_((per_instance - k).to(weight_dtype).view(-1, 1)).amax(dim=1).long()
        ctx.save_for_backward(instances, first * num_clusters + torch.arange(num_clusters, device=labels.device))
        return selected

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        instances, index = ctx.saved_tensors
        # Under autocast the forward product ran in half precision; the backward is outside it.
        return (F.embedding_bag(index, instances, per_sample_weights=grad.to(instances.dtype), mode="sum"),
                None, None, None)


@torch.no_grad()
def update_proxy_b_(proxies_b: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                    momentum: float) -> torch.Tensor:
    """In place, once per cluster y of the batch: ``B[y] <- normalise(m B[y] + (1-m) mean_y)``,
    with ``mean_y`` the mean of the batch's features of y (METHODS §4, proxy B).

    The per-cluster means come from a (B, B) same-cluster matrix product rather than a
    scatter-add, whose summation order (atomics on CUDA) would differ between DDP ranks.

    Args:
        proxies_b: (C, d) proxies B, updated in place.
        features: (B, d) batch features (detached).
        labels: (B,) cluster of each feature.
        momentum: m, the weight of the old entry (0.1).
    """
    features = features.to(proxies_b.dtype)
    same = (labels.unsqueeze(1) == labels.unsqueeze(0)).to(features.dtype)
    means = (same @ features) / same.sum(dim=1, keepdim=True)
    updated = F.normalize(momentum * proxies_b[labels] + (1.0 - momentum) * means, dim=1)
    # Every position of a cluster writes the row computed at the cluster's first position
    # (argmax returns the first maximum), so repeated indices carry identical values.
    proxies_b[labels] = updated[same.argmax(dim=1)]
    return proxies_b


@torch.no_grad()
def init_instance_memory(teacher_features: torch.Tensor, clusters: torch.Tensor, num_clusters: int,
                         per_cluster: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """The multi-instance proxies at an epoch start (METHODS §4, stage 2): for each cluster,
    ``per_cluster`` of its images drawn uniformly at random *with* replacement, taken from the
    EMA teacher's epoch-start features.

    Args:
        teacher_features: (N, d) the teacher's features of the epoch's pseudo-labelled images.
        clusters: (N,) cluster of each image; every cluster in [0, C) must have an image.
        num_clusters: C.
        per_cluster: K (16).
        generator: source of the random draws (on ``teacher_features``' device).

    Returns:
        (K C, d) new tensor, entry ``y + k C`` the k-th instance of cluster y.
    """
    device = teacher_features.device
    clusters = clusters.to(device)
    counts = torch.bincount(clusters, minlength=num_clusters)
    if counts.numel() != num_clusters or not bool((counts > 0).all()):
        raise ValueError(f"cluster labels must cover [0, {num_clusters}) with no empty cluster")
    order = torch.argsort(clusters, stable=True)
    starts = torch.cumsum(counts, 0) - counts
    # floor(u * n) with u uniform in [0, 1): a uniform draw from the cluster's n images; float64
    # keeps the bias of the rounding negligible, the clamp guards u * n rounding up to n.
    uniform = torch.rand(per_cluster, num_clusters, generator=generator, device=device, dtype=torch.float64)
    offsets = torch.minimum((uniform * counts).long(), counts - 1)
    return teacher_features[order[starts + offsets].reshape(-1)]


@torch.no_grad()
def replace_instances_(instance_buffer: torch.Tensor, features: torch.Tensor, labels: torch.Tensor,
                       num_clusters: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """In place, the multi-instance proxies' update (METHODS §4, stage 2): for each cluster y
    of the batch, its K entries are replaced by K of the batch's features of y, drawn without
    replacement when the batch holds at least K of them, with replacement otherwise.

    The batch positions are put in a uniformly random order within each cluster (a random
    permutation, then a stable sort by cluster), giving each position a rank in its cluster.
    Entry k of cluster y takes the position of rank k (without replacement) or of a uniform
    random rank (with replacement; one draw per (k, cluster)). Every (k, position) pair then
    writes the position's own feature, to entry ``y + k C`` when the position holds the rank
    that entry takes and to the scratch row otherwise: each entry is written exactly once and
    the features are read in place, never gathered into a (K B, d) copy.

    Args:
        instance_buffer: (K C + 1, d): the K C multi-instance proxies, updated in place,
            followed by one scratch row whose content is meaningless.
        features: (B, d) batch features (detached).
        labels: (B,) cluster of each feature.
        num_clusters: C.
        generator: source of the random draws (on ``instance_buffer``'s device).
    """
    device = instance_buffer.device
    scratch = instance_buffer.shape[0] - 1
    per_cluster = scratch // num_clusters
    batch = labels.numel()
    perm = torch.randperm(batch, generator=generator, device=device)
    perm = perm[torch.argsort(labels[perm], stable=True)]
    sorted_labels = labels[perm]
    start = torch.searchsorted(sorted_labels, labels)  # first slot of each position's cluster in perm
    count = torch.searchsorted(sorted_labels, labels, right=True) - start
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(batch, device=device)
    rank -= start
    uniform = torch.rand(per_cluster, num_clusters, generator=generator, device=device,
                         dtype=torch.float64)[:, labels]  # (K, B), shared by a cluster's positions
    k = torch.arange(per_cluster, device=device).unsqueeze(1)
    taken = torch.where(count >= per_cluster, k, torch.minimum((uniform * count).long(), count - 1))
    destination = torch.where(taken == rank, labels + k * num_clusters, scratch)  # (K, B)
    values = features.to(instance_buffer.dtype).unsqueeze(0).expand(per_cluster, batch, features.shape[1])
    instance_buffer.index_put_((destination,), values)
    return instance_buffer
