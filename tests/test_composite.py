"""CompositeMemory (issue 13): a one-member composite is its head bit for bit; several members
are the weighted sum of independently built heads with their own tau / momentum; the batch
requirement rule refuses samplers a member cannot train with; DCMIP in a composite gets the
two-stage trainer and its learning-rate schedule."""
import pytest
import torch
import torch.nn.functional as F

from fastreid.config import get_cfg

import dcmip  # noqa: F401
from dcmip.clustering import camera_aware_proxies
from dcmip.config import add_dcmip_config
from dcmip.engine import defaults
from dcmip.engine.checkpoint import checkpoint_metadata
from dcmip.engine.schedule import lr_factor
from dcmip.memory import MEMORY_HEAD_REGISTRY, build_memory_head, uses_dcmip
from dcmip.memory.base import check_batch_groups
from dcmip.memory.composite import check_memory_config
from dcmip.registry import UserInputError
from dcmip.sampling import SAMPLER_REGISTRY
from dcmip.structures import PseudoLabels
from gloo import free_port, gloo_group

SAMPLER_GROUPS = {name: cls.GROUPS for name, cls in SAMPLER_REGISTRY._obj_map.items()}
O2CAP = "CameraAwareProxyMemory"
DCMIP = "DiscrepantProxyMemory"
CLUSTER = "ClusterMemory"


def make_cfg(name, **memory):
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.UNSUP.MEMORY.NAME = name
    cfg.UNSUP.DCMIP.INSTANCES_PER_CLUSTER = 4
    cfg.UNSUP.O2CAP.HARD_NEGATIVES = 5
    cfg.UNSUP.O2CAP.ONLINE_POSITIVES = 2
    cfg.UNSUP.SAMPLER.NAME = "RandomMultipleGallerySampler"
    for key, value in memory.items():
        cfg.UNSUP.MEMORY[key] = value
    return cfg


def make_pseudo(stage2: bool, n=48, clusters=8, cams=3, dim=16, epoch=2):
    g = torch.Generator().manual_seed(5)
    labels = torch.arange(n) % clusters
    cam = torch.randint(0, cams, (n,), generator=g)
    return PseudoLabels(
        features=F.normalize(torch.randn(n, dim, generator=g), dim=1), clusters=labels, cams=cam,
        proxies=torch.as_tensor(camera_aware_proxies(labels.numpy(), cam.numpy())).long(),
        indices=torch.arange(n),
        teacher_features=F.normalize(torch.randn(n, dim, generator=g), dim=1) if stage2 else None,
        true_ids=labels // 2, epoch=epoch)


def batches(pseudo, steps=3, size=12, dim=16):
    g = torch.Generator().manual_seed(11)
    for _ in range(steps):
        rows = torch.randint(0, len(pseudo.clusters), (size,), generator=g)
        batch = {"clusters": pseudo.clusters[rows], "proxies": pseudo.proxies[rows], "camids": pseudo.cams[rows],
                 "index": rows,
                 "multiplicity": {k: int(torch.bincount(getattr(pseudo, k)[rows]).max())
                                  for k in ("clusters", "proxies")}}
        yield torch.randn(size, dim, generator=g), batch


def memory_buffers(head):
    return {name: buf.clone() for name, buf in head.named_buffers()}


def run(head, pseudo, steps=3):
    """Losses, feature gradients and memories after every step of ``head``."""
    head.reset(pseudo)
    trace = []
    for raw, batch in batches(pseudo, steps):
        raw = raw.clone().requires_grad_(True)
        features = F.normalize(raw, dim=1)
        losses = head(features, batch)
        sum(losses.values()).backward()
        head.update(features.detach(), batch)
        trace.append(({k: v.detach() for k, v in losses.items()}, raw.grad, memory_buffers(head)))
    return trace


SINGLE = {
    "cluster_sequential": (CLUSTER, {}, False),
    "cluster_hardest": (CLUSTER, {"UPDATE": "hardest"}, False),
    "dcmip_stage1": (DCMIP, {}, False),
    "dcmip_stage2": (DCMIP, {}, True),
    "o2cap": (O2CAP, {"TEMP": 0.07, "MOMENTUM": 0.2}, False),
}


@pytest.mark.parametrize("case", list(SINGLE))
def test_one_member_composite_is_the_head_bit_for_bit(case):
    name, memory, stage2 = SINGLE[case]
    pseudo = make_pseudo(stage2)
    alone = run(build_memory_head(make_cfg(name, **memory)), pseudo)
    composite = build_memory_head(make_cfg("CompositeMemory", MEMBERS=(name,), **memory))
    together = run(composite, pseudo)
    for (losses_a, grad_a, mem_a), (losses_c, grad_c, mem_c) in zip(alone, together):
        assert list(losses_a) == list(losses_c)
        assert all(torch.equal(losses_a[k], losses_c[k]) for k in losses_a)
        assert torch.equal(grad_a, grad_c)
        # The member's buffers sit under heads.0.
        assert {f"heads.0.{k}" for k in mem_a} == set(mem_c)
        assert all(torch.equal(mem_a[k], mem_c[f"heads.0.{k}"]) for k in mem_a)
    if name == DCMIP:
        assert ("loss_ins" in alone[0][0]) == stage2
    if name == O2CAP:
        assert composite.epoch_statistics() == build_and_stats(name, memory, pseudo)


def build_and_stats(name, memory, pseudo):
    head = build_memory_head(make_cfg(name, **memory))
    run(head, pseudo)
    stats = head.epoch_statistics()
    assert stats  # the online association ran and reports Fig. 5's statistics
    return stats


def test_members_are_independent_heads_with_their_own_tau_momentum_and_weight():
    """DCMIP (tau 0.05, m 0.1, weight 2) + O2CAP (tau 0.07, mu 0.2, weight 0.5): each loss is
    the weight times the loss of the head built alone with its settings; each memory moves
    as that head's does; the gradient is the weighted sum of the heads' gradients."""
    pseudo = make_pseudo(stage2=True)
    composite = build_memory_head(make_cfg("CompositeMemory", MEMBERS=(DCMIP, O2CAP), WEIGHTS=(2.0, 0.5),
                                           MEMBER_TEMPS=(0.05, 0.07), MEMBER_MOMENTA=(0.1, 0.2),
                                           TEMP=0.5, MOMENTUM=0.9))
    dcmip_head = build_memory_head(make_cfg(DCMIP, TEMP=0.05, MOMENTUM=0.1))
    o2cap_head = build_memory_head(make_cfg(O2CAP, TEMP=0.07, MOMENTUM=0.2))
    assert (composite.heads[0].temp, composite.heads[0].momentum) == (0.05, 0.1)
    assert (composite.heads[1].temp, composite.heads[1].momentum) == (0.07, 0.2)
    together = run(composite, pseudo)
    for (losses_c, grad_c, mem_c), (losses_d, grad_d, mem_d), (losses_o, grad_o, mem_o) in zip(
            together, run(dcmip_head, pseudo), run(o2cap_head, pseudo)):
        assert set(losses_c) == {"loss_cc", "loss_ins", "loss_offline", "loss_online"}
        for k in losses_d:
            assert torch.equal(losses_c[k], 2.0 * losses_d[k])
        for k in losses_o:
            assert torch.equal(losses_c[k], 0.5 * losses_o[k])
        torch.testing.assert_close(grad_c, 2.0 * grad_d + 0.5 * grad_o, rtol=1e-5, atol=1e-7)
        assert all(torch.equal(mem_d[k], mem_c[f"heads.0.{k}"]) for k in mem_d)
        assert all(torch.equal(mem_o[k], mem_c[f"heads.1.{k}"]) for k in mem_o)


def test_shared_temperature_and_momentum_when_member_keys_are_empty():
    composite = build_memory_head(make_cfg("CompositeMemory", MEMBERS=(DCMIP, O2CAP), TEMP=0.06, MOMENTUM=0.3))
    assert [(h.temp, h.momentum) for h in composite.heads] == [(0.06, 0.3), (0.06, 0.3)]
    assert [m.weight for m in composite.settings] == [1.0, 1.0]


def test_memories_are_not_checkpointed():
    """Every memory is rebuilt from the epoch-start features: a composite adds no checkpoint
    key, so resuming and loading work as for one head."""
    composite = build_memory_head(make_cfg("CompositeMemory", MEMBERS=(DCMIP, O2CAP)))
    composite.reset(make_pseudo(stage2=True))
    assert composite.state_dict() == {}
    assert len(dict(composite.named_buffers())) > 0


def test_checkpoint_metadata_names_the_members():
    cfg = make_cfg("CompositeMemory", MEMBERS=(DCMIP, O2CAP))
    assert checkpoint_metadata(cfg)["method"] == "CompositeMemory(DiscrepantProxyMemory+CameraAwareProxyMemory)"
    assert checkpoint_metadata(make_cfg(DCMIP))["method"] == DCMIP


@pytest.mark.parametrize("memory, message", [
    ({}, "needs UNSUP.MEMORY.MEMBERS"),
    ({"MEMBERS": ("NoSuchHead",)}, "UNSUP.MEMORY.MEMBERS: unknown name 'NoSuchHead'"),
    ({"MEMBERS": ("CompositeMemory", DCMIP)}, "cannot be a member"),
    ({"MEMBERS": (DCMIP, DCMIP)}, "DiscrepantProxyMemory listed twice"),
    ({"MEMBERS": (DCMIP, O2CAP), "WEIGHTS": (1.0,)}, "UNSUP.MEMORY.WEIGHTS (1.0,): give one value per member"),
    ({"MEMBERS": (DCMIP, O2CAP), "MEMBER_TEMPS": (0.05, 0.0)},
     "MEMBER_TEMPS (0.05, 0.0): every value must be a number > 0"),
    ({"MEMBERS": (DCMIP, O2CAP), "MEMBER_MOMENTA": (0.1, 1.5)}, "in [0, 1]"),
    ({"MEMBERS": (DCMIP, O2CAP), "WEIGHTS": (1.0, -1.0)}, ">= 0"),
])
def test_bad_composite_configs_are_refused(memory, message):
    cfg = make_cfg("CompositeMemory", **memory)
    with pytest.raises(UserInputError) as e:
        check_memory_config(cfg, SAMPLER_GROUPS)
    assert message in str(e.value)
    with pytest.raises(UserInputError):
        build_memory_head(cfg)


def test_composite_keys_without_composite_are_refused():
    with pytest.raises(UserInputError, match=r"UNSUP.MEMORY.MEMBERS, WEIGHTS only apply to .*CompositeMemory"):
        check_memory_config(make_cfg(DCMIP, MEMBERS=(DCMIP,), WEIGHTS=(1.0,)), SAMPLER_GROUPS)


@pytest.mark.parametrize("name", [DCMIP, "CompositeMemory"])
def test_dcmip_refuses_the_proxy_balanced_sampler(name):
    """The real incompatibility: DCMIP's proxy B and multi-instance updates take a cluster's
    batch images as a sample of the cluster; ProxyBalancedSampler groups them by camera-aware
    proxy (one camera). Alone or next to O2CAP, the error names the head and the sampler."""
    cfg = make_cfg(name, MEMBERS=(O2CAP, DCMIP) if name == "CompositeMemory" else ())
    cfg.UNSUP.SAMPLER.NAME = "ProxyBalancedSampler"
    with pytest.raises(UserInputError) as e:
        check_memory_config(cfg, SAMPLER_GROUPS)
    msg = str(e.value)
    assert "DiscrepantProxyMemory needs batches grouped by clusters" in msg
    assert "ProxyBalancedSampler groups them by proxies" in msg
    assert "CameraDiverseSampler, ClusterBalancedSampler, RandomMultipleGallerySampler" in msg
    for sampler in ("RandomMultipleGallerySampler", "ClusterBalancedSampler"):
        cfg.UNSUP.SAMPLER.NAME = sampler
        check_memory_config(cfg, SAMPLER_GROUPS)


def test_o2cap_and_cluster_contrast_accept_every_sampler():
    for sampler in SAMPLER_GROUPS:
        cfg = make_cfg("CompositeMemory", MEMBERS=(O2CAP, CLUSTER))
        cfg.UNSUP.SAMPLER.NAME = sampler
        check_memory_config(cfg, SAMPLER_GROUPS)


def test_members_with_disjoint_batch_groups_name_both():
    with pytest.raises(ValueError) as e:
        check_batch_groups({"A": ("clusters",), "B": None, "C": ("proxies",)}, "ProxyBalancedSampler", SAMPLER_GROUPS)
    assert "A needs batches grouped by clusters and C by proxies; no sampler serves both" in str(e.value)
    with pytest.raises(ValueError, match="MySampler declares no GROUPS"):
        check_batch_groups({"A": ("clusters",)}, "MySampler", {**SAMPLER_GROUPS, "MySampler": None})
    check_batch_groups({"A": ("clusters", "proxies"), "B": ("proxies",)}, "ProxyBalancedSampler", SAMPLER_GROUPS)


def test_registered_heads_declare_their_batch_groups():
    assert MEMORY_HEAD_REGISTRY.get(DCMIP).BATCH_GROUPS == ("clusters",)
    assert MEMORY_HEAD_REGISTRY.get(O2CAP).BATCH_GROUPS is None
    assert MEMORY_HEAD_REGISTRY.get(CLUSTER).BATCH_GROUPS is None


def stage_cfg(name, members=()):
    cfg = make_cfg(name, MEMBERS=members)
    cfg.UNSUP.DCMIP.STAGE1_EPOCHS, cfg.UNSUP.DCMIP.STAGE_LR_STEPS = 5, [3]
    cfg.SOLVER.MAX_EPOCH, cfg.SOLVER.STEPS, cfg.SOLVER.WARMUP_ITERS = 10, [8], 0
    return cfg


def test_dcmip_in_a_composite_has_dcmip_schedule_and_two_stage_trainer(monkeypatch):
    dcmip_cfg = stage_cfg(DCMIP)
    composite = stage_cfg("CompositeMemory", (DCMIP, O2CAP))
    o2cap_only = stage_cfg("CompositeMemory", (O2CAP,))
    assert uses_dcmip(dcmip_cfg) and uses_dcmip(composite) and not uses_dcmip(o2cap_only)
    factors = [lr_factor(composite, e, e * composite.UNSUP.ITERS) for e in range(10)]
    assert factors == [lr_factor(dcmip_cfg, e, e * dcmip_cfg.UNSUP.ITERS) for e in range(10)]
    assert factors == [1, 1, 1, 0.1, 0.1, 1, 1, 1, 0.1, 0.1]  # restarted at stage 2 (epoch 5)
    assert [lr_factor(o2cap_only, e, 0) for e in (7, 8)] == [1, pytest.approx(0.1)]
    monkeypatch.setattr(defaults, "TwoStageTrainer", lambda cfg: "two-stage")
    monkeypatch.setattr(defaults, "UnsupervisedTrainer", lambda cfg: "one-stage")
    assert defaults.build_trainer(composite) == "two-stage"
    assert defaults.build_trainer(o2cap_only) == "one-stage"
    composite.UNSUP.DCMIP.STAGE1_EPOCHS = 10
    assert defaults.build_trainer(composite) == "one-stage"


def test_the_config_check_refuses_the_combination_before_training():
    import argparse

    from dcmip.engine.defaults import load_cfg

    opts = ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.PRETRAIN", "False", "UNSUP.MEMORY.NAME", "CompositeMemory",
            "UNSUP.MEMORY.MEMBERS", '("CameraAwareProxyMemory", "DiscrepantProxyMemory")',
            "UNSUP.SAMPLER.NAME", "ProxyBalancedSampler"]
    with pytest.raises(UserInputError, match="DiscrepantProxyMemory needs batches grouped by clusters"):
        load_cfg(argparse.Namespace(config_file="", opts=opts, eval_only=False))
    # Evaluating a trained model does not sample batches.
    load_cfg(argparse.Namespace(config_file="", opts=opts + ["DATASETS.TESTS", '("DemoMarket",)'], eval_only=True))


def _ddp_worker(rank, port, out_dir):
    import os

    from dcmip.modeling.meta_arch import _all_gather_batch

    torch.set_num_threads(1)
    with gloo_group(rank, 2, port):
        head, pseudo = ddp_case()
        memories = []
        for raw, batch in batches(pseudo):
            half = len(raw) // 2
            rows = slice(rank * half, (rank + 1) * half)
            local = {k: v[rows] for k, v in batch.items() if torch.is_tensor(v)}
            local["multiplicity"] = {k: int(torch.bincount(local[k]).max()) for k in ("clusters", "proxies")}
            # What UnsupervisedReID.update_memory does under DDP: all-gather, then update.
            head.update(*_all_gather_batch(F.normalize(raw, dim=1)[rows], local))
            memories.append({k: v.clone() for k, v in head.named_buffers()})
        torch.save(memories, os.path.join(out_dir, f"rank{rank}.pt"))


def ddp_case():
    head = build_memory_head(make_cfg("CompositeMemory", MEMBERS=(DCMIP, O2CAP), MEMBER_TEMPS=(0.05, 0.07),
                                      MEMBER_MOMENTA=(0.1, 0.2)))
    pseudo = make_pseudo(stage2=True)
    head.reset(pseudo)
    return head, pseudo


def test_two_processes_update_every_member_as_one_process(tmp_path):
    """Two gloo ranks, each with half of every batch: after every step both hold the memories
    of a single process updating with the whole batch (DCMIP's random instance draws too)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    head, pseudo = ddp_case()
    for step, (raw, batch) in enumerate(batches(pseudo)):
        head.update(F.normalize(raw, dim=1), batch)
        for name, expected in head.named_buffers():
            if "statistic" in name:  # association statistics are per rank (averaged when logged)
                continue
            for r in range(2):
                torch.testing.assert_close(ranks[r][step][name], expected, atol=0, rtol=0)
