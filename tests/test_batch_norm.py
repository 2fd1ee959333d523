"""UNSUP.BN_GROUP_SIZE (dcmip.modeling.batch_norm): a batch of B images normalised in groups of
G equals running the model on each G-image chunk on its own (what each DataParallel replica
computes), with the running statistics of the first chunk only (the replica on device 0)."""
import copy

import pytest
import torch
from torch import nn

import dcmip  # noqa: F401
from dcmip.modeling.batch_norm import GroupBatchNorm1d, GroupBatchNorm2d, convert_group_batchnorm
from fastreid.layers.batch_norm import BatchNorm, GhostBatchNorm


class Net(nn.Module):
    """Conv -> BN2d -> ReLU -> pool -> fastreid BatchNorm neck (frozen bias) on (B, C, 1, 1)
    -> Linear -> BN1d: every kind of BatchNorm the models hold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.neck = BatchNorm(6, bias_freeze=True)
        self.fc = nn.Linear(6, 5)
        self.bn1d = nn.BatchNorm1d(5, momentum=None)  # cumulative average: uses num_batches_tracked

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.neck(x.mean((2, 3), keepdim=True))[..., 0, 0]
        return self.bn1d(self.fc(x))


def make(seed=0):
    torch.manual_seed(seed)
    net = Net().double()
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return net


@pytest.mark.parametrize("batch,group", [(12, 4), (12, 3), (8, 8), (6, 2)])
def test_groups_equal_the_model_run_on_each_chunk(batch, group):
    """Outputs equal the per-chunk runs; running statistics and the batch count equal a run on
    the first chunk only, over three training steps."""
    g = torch.Generator().manual_seed(1)
    grouped = convert_group_batchnorm(make(), group)
    reference = make()
    first_only = make()
    for _ in range(3):
        x = torch.randn(batch, 3, 5, 4, generator=g, dtype=torch.float64)
        out = grouped(x)
        # A fresh replica per chunk, as DataParallel makes: no chunk sees another's update.
        expected = torch.cat([copy.deepcopy(reference)(chunk) for chunk in x.split(group)])
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
        first_only(x[:group])
        for (name, ours), (_, theirs) in zip(grouped.named_buffers(), first_only.named_buffers()):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12, msg=name)
        reference.load_state_dict(first_only.state_dict())  # the replicas of the next step


def test_gradients_equal_the_per_chunk_runs():
    g = torch.Generator().manual_seed(2)
    grouped = convert_group_batchnorm(make(), 4)
    reference = make()
    x = torch.randn(12, 3, 5, 4, generator=g, dtype=torch.float64)
    target = torch.randn(12, 5, generator=g, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (grouped(xa) * target).sum().backward()
    # The per-chunk runs share one set of parameters, whose gradients add up over the chunks
    # (DataParallel reduces the replicas' gradients the same way).
    (torch.cat([reference(c) for c in xb.split(4)]) * target).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=0, atol=1e-12)
    for (name, p), q in zip(grouped.named_parameters(), reference.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-12, msg=name)
        else:
            assert p.grad is None and q.grad is None, name


def test_one_group_is_plain_batchnorm_and_eval_is_unchanged():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(8, 3, 5, 4, generator=g, dtype=torch.float64)
    grouped, plain = convert_group_batchnorm(make(), 8), make()
    assert torch.equal(grouped(x), plain(x))
    grouped, plain = convert_group_batchnorm(make(), 2).eval(), make().eval()
    assert torch.equal(grouped(x), plain(x))
    assert all(torch.equal(a, b) for a, b in zip(grouped.buffers(), plain.buffers()))


def test_conversion_keeps_tensors_flags_and_state_dict_keys():
    net = make()
    params = dict(net.named_parameters())
    state = net.state_dict()
    converted = convert_group_batchnorm(net, 4)
    assert isinstance(converted.bn, GroupBatchNorm2d) and isinstance(converted.neck, GroupBatchNorm2d)
    assert isinstance(converted.bn1d, GroupBatchNorm1d) and converted.bn1d.momentum is None
    assert isinstance(converted.bn, nn.BatchNorm2d)  # fastreid's weight-decay-of-norm grouping still applies
    for name, p in converted.named_parameters():
        assert p is params[name]
    assert not converted.neck.bias.requires_grad
    assert converted.state_dict().keys() == state.keys()
    assert convert_group_batchnorm(make(), 0).bn.__class__ is nn.BatchNorm2d


def test_a_batch_that_is_not_whole_groups_and_unsupported_layers_raise():
    net = convert_group_batchnorm(make(), 5)
    with pytest.raises(ValueError, match="UNSUP.BN_GROUP_SIZE 5.*divide"):
        net(torch.randn(12, 3, 5, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="GhostBatchNorm"):
        convert_group_batchnorm(nn.Sequential(GhostBatchNorm(4, num_splits=2)), 2)
    with pytest.raises(ValueError, match="must be 0"):
        convert_group_batchnorm(make(), -1)


def test_group_size_must_divide_each_process_batch():
    from dcmip.modeling.batch_norm import check_group_size

    check_group_size(64, 256, 1)  # the DCMIP GPU configs: 4 groups on one GPU
    check_group_size(64, 256, 4)  # one group per process
    check_group_size(0, 30, 4)  # whole batch: anything goes
    with pytest.raises(ValueError, match="divide the 256 images"):
        check_group_size(48, 256, 1)
    with pytest.raises(ValueError, match="spanning processes"):
        check_group_size(64, 256, 8)


def test_config_check_refuses_a_group_size_that_does_not_divide_the_batch():
    import argparse
    import os

    from dcmip.engine.defaults import load_cfg
    from dcmip.registry import UserInputError

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "DCMIP",
                          "demo_cpu.yml")
    with pytest.raises(UserInputError, match="UNSUP.BN_GROUP_SIZE 48"):
        load_cfg(argparse.Namespace(config_file=config, eval_only=False, opts=[
            "MODEL.BACKBONE.PRETRAIN", "False", "SOLVER.IMS_PER_BATCH", "64", "UNSUP.BN_GROUP_SIZE", "48"]))
