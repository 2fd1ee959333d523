"""l2_normalize: F.normalize's values, its gradient from a shorter backward pass."""
import pytest
import torch
import torch.nn.functional as F

from dcmip.modeling.normalize import l2_normalize


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_are_f_normalize_bit_for_bit(dtype):
    x = torch.randn(16, 40, generator=torch.Generator().manual_seed(0), dtype=dtype) * 3
    assert torch.equal(l2_normalize(x), F.normalize(x, dim=1))


def test_gradient_matches_f_normalize_including_a_clamped_row():
    """Random rows, and a row below eps, where the gradient is g / eps (no projection)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x[2] = 1e-14
    weights = torch.randn(6, 5, generator=g, dtype=torch.float64)
    x_ours, x_ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours, = torch.autograd.grad((l2_normalize(x_ours) * weights).sum(), x_ours)
    expected, = torch.autograd.grad((F.normalize(x_ref, dim=1) * weights).sum(), x_ref)
    torch.testing.assert_close(ours, expected, atol=1e-12, rtol=1e-10)


def test_gradcheck():
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(l2_normalize, (x,))


def test_refuses_other_shapes():
    with pytest.raises(ValueError, match=r"\(B, d\)"):
        l2_normalize(torch.ones(2, 3, 4))
