"""The L2 normalisation of the embeddings, with a direct backward pass.

``F.normalize``'s autograd trace (norm, clamp, expand, division) costs about twenty operations
in the backward pass; with the memory heads at a few dozen operations per step, that is a
tenth of a step at d = 128 (issue 11). The forward pass here is ``F.normalize``'s, operation
for operation, so the embeddings are bit-identical; the gradient is the same formula,
``(g - y (y·g)) / |x|``, formed in five operations.
"""
import torch
from torch.autograd.function import once_differentiable


class _L2Normalize(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        denom = norm.clamp_min(eps)
        y = x / denom
        ctx.save_for_backward(y, denom, norm >= eps)
        ctx.x_dtype = x.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        y, denom, unclamped = ctx.saved_tensors
        # Where the norm was clamped to eps, y = x / eps is linear in x: no projection term.
        projection = (y * grad).sum(dim=1, keepdim=True).mul_(unclamped)
        grad = (grad - y * projection) / denom
        return (grad if grad.dtype == ctx.x_dtype else grad.to(ctx.x_dtype)), None


def l2_normalize(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """``F.normalize(x, dim=1, eps=eps)`` for (B, d) ``x``: the same values, a shorter backward."""
    if x.dim() != 2:
        raise ValueError(f"l2_normalize takes (B, d) embeddings, got shape {tuple(x.shape)}")
    return _L2Normalize.apply(x, eps)
