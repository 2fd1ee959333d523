"""Cluster Contrast (METHODS §3): one memory entry per cluster, a softmax over all clusters."""
import torch
import torch.nn.functional as F


def cluster_contrast_loss(features: torch.Tensor, memory: torch.Tensor, labels: torch.Tensor,
                          temp: float) -> torch.Tensor:
    """ClusterNCE: mean over the batch of ``CE(f · Mᵀ / τ, y)``.

    Args:
        features: (B, d) L2-normalised embeddings.
        memory: (C, d) cluster entries (not differentiated).
        labels: (B,) cluster of each image.
        temp: τ (0.05).
    """
    logits = features @ memory.detach().t().to(features.dtype) / temp
    return F.cross_entropy(logits, labels)
