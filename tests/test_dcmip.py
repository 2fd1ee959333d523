"""DCMIP (METHODS §4): losses, memory updates, head, EMA teacher and sampler, on small known
cases and against the per-image implementation of ``naive_dcmip.py``."""
import math
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from dcmip.memory import build_memory_head
from dcmip.memory.dcmip.functional import (cluster_contrast_loss, init_instance_memory, instance_loss, replace_instances_,
                                update_proxy_b_)
from dcmip.memory.updates import hardest_momentum_update_, sequential_momentum_update_
from dcmip.modeling.ema import ema_update_
from dcmip.structures import PseudoLabels
from fastreid.config import get_cfg
from naive_dcmip import (NaiveDCMIPHead, naive_cluster_contrast_loss, naive_hardest_update_, naive_instance_loss,
                         naive_mean_update_, naive_sequential_update_)

TEMP, MARGIN, MOMENTUM = 0.05, 0.2, 0.1


def unit(*shape, generator, dtype=torch.float64):
    return F.normalize(torch.randn(*shape, generator=generator, dtype=dtype), dim=-1)


def random_case(seed, batch=24, clusters=7, dim=16, per_cluster=4, dtype=torch.float64):
    """Normalised features and memories; labels with repeats, absent clusters, and duplicated
    instance rows (as sampling with replacement produces) so that the hardest-instance
    maxima and minima have exact ties."""
    g = torch.Generator().manual_seed(seed)
    features = unit(batch, dim, generator=g, dtype=dtype)
    proxies = unit(2 * clusters, dim, generator=g, dtype=dtype)
    instances = unit(per_cluster * clusters, dim, generator=g, dtype=dtype)
    instances[clusters:2 * clusters] = instances[:clusters]
    labels = torch.randint(0, clusters - 1, (batch,), generator=g)  # the last cluster is absent
    return features, proxies, instances, labels


def dcmip_cfg(**dcmip_keys):
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.UNSUP.MEMORY.NAME = "DiscrepantProxyMemory"
    for key, value in dcmip_keys.items():
        setattr(cfg.UNSUP.DCMIP, key, value)
    return cfg


# ---- L_cc -------------------------------------------------------------------------------------

@pytest.mark.parametrize("margin", [0.2, 0.5])
def test_cluster_contrast_loss_known_case(margin):
    """τ = 1, one image f = e1 of cluster 0: A-logits (1, 0), B-logits (0.6, 1)."""
    features = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [1.0, 0.0]], dtype=torch.float64)
    loss = cluster_contrast_loss(features, proxies, torch.tensor([0]), 1.0, margin)
    ce_a = math.log(1 + math.exp(-1))  # 0.313: above r = 0.2, below r = 0.5
    ce_b = math.log(math.exp(0.6) + math.exp(1)) - 0.6
    assert loss.item() == pytest.approx(0.5 * (ce_b + max(ce_a - margin, 0.0)), abs=1e-12)
    loss.backward()
    # d CE / d f = Σ_j (p_j - [j = y]) proxy_j / τ; the A term only while relu is active.
    p_b = torch.softmax(torch.tensor([0.6, 1.0], dtype=torch.float64), 0)
    grad = 0.5 * ((p_b[0] - 1) * proxies[2] + p_b[1] * proxies[3])
    if ce_a > margin:
        p_a = torch.softmax(torch.tensor([1.0, 0.0], dtype=torch.float64), 0)
        grad = grad + 0.5 * ((p_a[0] - 1) * proxies[0] + p_a[1] * proxies[1])
    torch.testing.assert_close(features.grad[0], grad, atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed,margin", [(0, 0.2), (1, 0.2), (2, 100.0)])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_cluster_contrast_loss_matches_per_image(seed, margin, dtype, tol):
    features, proxies, _, labels = random_case(seed, dtype=dtype)
    ours_f = features.clone().requires_grad_()
    naive_f = features.clone().requires_grad_()
    ours = cluster_contrast_loss(ours_f, proxies, labels, TEMP, margin)
    num_clusters = proxies.shape[0] // 2
    naive = naive_cluster_contrast_loss(naive_f, proxies[:num_clusters], proxies[num_clusters:], labels, TEMP,
                                        margin)
    ours.backward()
    naive.backward()
    assert abs(ours.item() - naive.item()) <= tol
    torch.testing.assert_close(ours_f.grad, naive_f.grad, atol=tol, rtol=0)


# ---- L_ins ------------------------------------------------------------------------------------

def test_instance_loss_known_case():
    """τ = 1, K = 2, C = 2, f = e1 of cluster 0. Cluster 0's instances score (1, 0): hardest
    positive 0. Cluster 1's score (0.2, 0.9): hardest negative 0.9. L = CE((0, 0.9), 0)."""
    features = torch.tensor([[1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    c1 = [[0.2, math.sqrt(1 - 0.04)], [0.9, math.sqrt(1 - 0.81)]]
    # entry y + k C: rows (k=0, c=0), (k=0, c=1), (k=1, c=0), (k=1, c=1)
    instances = torch.tensor([[1.0, 0.0], c1[0], [0.0, 1.0], c1[1]], dtype=torch.float64)
    loss = instance_loss(features, instances, torch.tensor([0]), 2, 1.0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(0.9)), abs=1e-12)
    loss.backward()
    p = torch.softmax(torch.tensor([0.0, 0.9], dtype=torch.float64), 0)
    # Only the selected instances carry gradient: (k=1, c=0) for the positive, (k=1, c=1) for the negative.
    torch.testing.assert_close(features.grad[0], (p[0] - 1) * instances[2] + p[1] * instances[3],
                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_instance_loss_matches_per_image(seed, dtype, tol):
    features, _, instances, labels = random_case(seed, dtype=dtype)
    ours_f = features.clone().requires_grad_()
    naive_f = features.clone().requires_grad_()
    ours = instance_loss(ours_f, instances, labels, 7, TEMP)
    naive = naive_instance_loss(naive_f, instances, labels, 7, TEMP)
    ours.backward()
    naive.backward()
    assert abs(ours.item() - naive.item()) <= tol
    torch.testing.assert_close(ours_f.grad, naive_f.grad, atol=tol, rtol=0)


def test_instance_loss_under_autocast_and_repeated_backward():
    features, _, instances, labels = random_case(0, dtype=torch.float32)
    reference = features.clone().requires_grad_()
    instance_loss(reference, instances, labels, 7, TEMP).backward()
    half = features.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = instance_loss(half, instances, labels, 7, TEMP)
    loss.backward(retain_graph=True)
    assert half.grad.dtype == torch.float32
    torch.testing.assert_close(half.grad, reference.grad, atol=0.05, rtol=0.05)
    first = half.grad.clone()
    loss.backward()  # the graph keeps what the backward reads: a second pass adds the same gradient
    torch.testing.assert_close(half.grad, 2 * first)


# ---- updates ----------------------------------------------------------------------------------

def test_update_proxy_b_known_case():
    proxies_b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    features = torch.tensor([[0.0, 1.0], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0])
    update_proxy_b_(proxies_b, features, labels, 0.5)
    # cluster 0: normalise(0.5 (1, 0) + 0.5 (0, 1)); cluster 1: normalise(0.5 (0, 1) + 0.5 (0.6, 0.8))
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(proxies_b, torch.tensor([[s, s], F.normalize(torch.tensor([0.3, 0.9]), dim=0).tolist()]))


@pytest.mark.parametrize("seed", [0, 1])
def test_proxy_updates_match_per_image(seed):
    features, proxies, _, labels = random_case(seed, batch=40)
    num_clusters = proxies.shape[0] // 2
    for ours_fn, naive_fn in ((lambda m: sequential_momentum_update_(m, features, labels, MOMENTUM, 40),
                               naive_sequential_update_),
                              (lambda m: hardest_momentum_update_(m, features, labels, MOMENTUM),
                               naive_hardest_update_),
                              (lambda m: update_proxy_b_(m, features, labels, MOMENTUM), naive_mean_update_)):
        ours = ours_fn(proxies[:num_clusters].clone())
        naive = naive_fn(proxies[:num_clusters].clone(), features, labels, MOMENTUM)
        torch.testing.assert_close(ours, naive, atol=1e-10, rtol=0)
        # The absent last cluster keeps its entry.
        assert torch.equal(ours[-1], proxies[num_clusters - 1])


# ---- multi-instance memory ------------------------------------------------------------------

def test_init_instance_memory_draws_each_clusters_teacher_features_with_replacement():
    g = torch.Generator().manual_seed(0)
    clusters = torch.tensor([2, 0, 1, 0, 2, 2, 1, 0, 0, 2])
    teacher = torch.arange(10, dtype=torch.float32).unsqueeze(1).repeat(1, 3)  # row i holds i
    sizes = Counter(clusters.tolist())
    repeated = False
    for _ in range(20):
        memory = init_instance_memory(teacher, clusters, 3, 16, g)
        rows = memory[:, 0].long().view(16, 3)  # [k, y]: the image behind entry y + k C
        assert memory.shape == (48, 3)
        for y in range(3):
            assert all(int(clusters[r]) == y for r in rows[:, y])
            repeated |= len(set(rows[:, y].tolist())) < min(16, sizes[y])
    # 16 draws from 4 or 3 images always repeat; with replacement is also visible as repeats
    # among clusters' draws in general.
    assert repeated
    with pytest.raises(ValueError, match="no empty cluster"):
        init_instance_memory(teacher, clusters, 4, 16, g)


def test_init_instance_memory_is_uniform_and_seeded():
    clusters = torch.zeros(5, dtype=torch.long)
    teacher = torch.arange(5, dtype=torch.float32).unsqueeze(1)
    draws = init_instance_memory(teacher, clusters, 1, 20000, torch.Generator().manual_seed(3))[:, 0]
    freq = torch.bincount(draws.long(), minlength=5).double() / draws.numel()
    assert torch.all((freq - 0.2).abs() < 0.015)
    again = init_instance_memory(teacher, clusters, 1, 20000, torch.Generator().manual_seed(3))[:, 0]
    assert torch.equal(draws, again)


def replacement_batch():
    """Cluster 0: 20 batch images (>= K = 16), cluster 2: 3 (< K), cluster 1 absent; feature
    row i holds 100 + i so that every entry names its source position."""
    labels = torch.tensor([0] * 12 + [2] * 3 + [0] * 8)
    features = (100 + torch.arange(labels.numel(), dtype=torch.float32)).unsqueeze(1).repeat(1, 2)
    return features, labels


def test_replace_instances_draws_batch_features_of_the_cluster():
    features, labels = replacement_batch()
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        memory = -torch.arange(49, dtype=torch.float32).unsqueeze(1).repeat(1, 2)  # + scratch row
        replace_instances_(memory, features, labels, 3, g)
        entries = memory[:48, 0].view(16, 3)  # [k, y]
        sources = (entries - 100).long()
        for y in (0, 2):
            assert all(int(labels[p]) == y for p in sources[:, y])
        assert len(set(sources[:, 0].tolist())) == 16  # without replacement: 16 distinct images
        assert set(sources[:, 2].tolist()) <= {12, 13, 14}  # with replacement among its 3
        assert torch.equal(entries[:, 1], -(1 + 3 * torch.arange(16, dtype=torch.float32)))  # untouched


def test_replace_instances_is_uniform_and_seeded():
    features, labels = replacement_batch()
    g = torch.Generator().manual_seed(1)
    chosen, slot0_small = Counter(), Counter()
    trials = 3000
    for _ in range(trials):
        memory = torch.zeros(49, 2)
        replace_instances_(memory, features, labels, 3, g)
        sources = (memory[:48, 0].view(16, 3) - 100).long()
        chosen.update(sources[:, 0].tolist())
        slot0_small[int(sources[0, 2])] += 1
    # Cluster 0: each of its 20 images is among the 16 with probability 16 / 20.
    assert all(abs(chosen[p] / trials - 0.8) < 0.04 for p in range(23) if labels[p] == 0)
    # Cluster 2: each draw uniform over its 3 images.
    assert all(abs(slot0_small[p] / trials - 1 / 3) < 0.04 for p in (12, 13, 14))
    one = replace_instances_(torch.zeros(49, 2), features, labels, 3, torch.Generator().manual_seed(5))
    two = replace_instances_(torch.zeros(49, 2), features, labels, 3, torch.Generator().manual_seed(5))
    assert torch.equal(one[:48], two[:48])


def test_step_is_free_of_host_syncs_and_data_dependent_shapes():
    """On the meta device tensors have no values: any ``.item()``, boolean-mask indexing,
    ``nonzero`` or ``unique`` in a step would raise here."""
    with pytest.raises(Exception):
        torch.zeros(4, device="meta").nonzero()
    b, c, d, k = 32, 10, 8, 4
    features = torch.randn(b, d, device="meta", requires_grad=True)
    labels = torch.randint(c, (b,), device="meta")
    proxies = torch.randn(2 * c, d, device="meta")
    instances = torch.randn(k * c + 1, d, device="meta")
    loss = (cluster_contrast_loss(features, proxies, labels, TEMP, MARGIN)
            + instance_loss(features, instances[:-1], labels, c, TEMP))
    loss.backward()
    sequential_momentum_update_(proxies[:c], features.detach(), labels, MOMENTUM, rounds=k)
    hardest_momentum_update_(proxies[:c], features.detach(), labels, MOMENTUM)
    update_proxy_b_(proxies[c:], features.detach(), labels, MOMENTUM)
    replace_instances_(instances, features.detach(), labels, c)


# ---- the head ---------------------------------------------------------------------------------

def pseudo_labels(generator, num_images=48, num_clusters=6, dim=16, teacher=True):
    clusters = torch.arange(num_images) % num_clusters
    return PseudoLabels(features=unit(num_images, dim, generator=generator, dtype=torch.float32),
                        clusters=clusters, cams=torch.arange(num_images) % 3, proxies=clusters,
                        indices=torch.arange(num_images),
                        teacher_features=(unit(num_images, dim, generator=generator, dtype=torch.float32)
                                          if teacher else None))


@pytest.mark.parametrize("rule", ["sequential", "hardest"])
def test_head_stage2_step_matches_per_image(rule):
    cfg = dcmip_cfg(INSTANCES_PER_CLUSTER=4)
    cfg.UNSUP.MEMORY.UPDATE = rule
    head = build_memory_head(cfg)
    g = torch.Generator().manual_seed(0)
    pseudo = pseudo_labels(g)
    head.reset(pseudo)
    centroids = torch.stack([F.normalize(pseudo.features[pseudo.clusters == c].mean(0), dim=0) for c in range(6)])
    torch.testing.assert_close(head.proxies, torch.cat([centroids, centroids]))
    # Every instance is a teacher feature of its cluster.
    for entry in range(24):
        hits = (pseudo.teacher_features == head.instances[entry]).all(1)
        assert hits.any() and int(pseudo.clusters[hits.int().argmax()]) == entry % 6

    naive = NaiveDCMIPHead(head.proxies[:6].clone(), head.proxies[6:].clone(), head.instances.clone(),
                           TEMP, MARGIN, MOMENTUM, rule)
    features = unit(12, 16, generator=g, dtype=torch.float32)
    labels = torch.tensor([0, 0, 0, 0, 0, 2, 2, 2, 4, 4, 4, 4])
    batch = {"clusters": labels, "multiplicity": {"clusters": 5}}
    ours_f, naive_f = features.clone().requires_grad_(), features.clone().requires_grad_()
    losses = head(ours_f, batch)
    expected = naive.forward(naive_f, labels)
    assert losses.keys() == {"loss_cc", "loss_ins"}
    for key in losses:
        assert abs(losses[key].item() - expected[key].item()) <= 1e-5
    sum(losses.values()).backward()
    sum(expected.values()).backward()
    torch.testing.assert_close(ours_f.grad, naive_f.grad, atol=1e-5, rtol=0)

    before = head.instances.clone()
    head.update(features, batch)
    naive.update(features, labels)
    torch.testing.assert_close(head.proxies, torch.cat([naive.proxies_a, naive.proxies_b]), atol=1e-6, rtol=0)
    replaced = head.instances.view(4, 6, 16)
    for y in range(6):
        if y in (0, 2, 4):
            sources = [int((features == row).all(1).int().argmax()) for row in replaced[:, y]]
            assert all((features[s] == row).all() and int(labels[s]) == y for s, row in zip(sources, replaced[:, y]))
            if y == 0:  # 5 batch images >= K = 4: without replacement
                assert len(set(sources)) == 4
        else:
            assert torch.equal(replaced[:, y], before.view(4, 6, 16)[:, y])


def test_head_stage1_has_no_instance_memory():
    head = build_memory_head(dcmip_cfg())
    head.reset(pseudo_labels(torch.Generator().manual_seed(0), teacher=False))
    assert not head.stage2
    features = unit(8, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    batch = {"clusters": torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]), "multiplicity": {"clusters": 2}}
    assert head(features, batch).keys() == {"loss_cc"}
    head.update(features, batch)


@pytest.mark.parametrize("section,key,value,message", [
    ("MEMORY", "UPDATE", "mean", r"UNSUP.MEMORY.UPDATE='mean'; choose one of \('sequential', 'hardest'\)"),
    ("DCMIP", "MARGIN", -0.1, "UNSUP.DCMIP.MARGIN=-0.1; must be a number >= 0"),
    ("DCMIP", "INSTANCES_PER_CLUSTER", 0, "UNSUP.DCMIP.INSTANCES_PER_CLUSTER=0; must be an integer >= 1"),
])
def test_head_rejects_bad_config(section, key, value, message):
    cfg = dcmip_cfg()
    setattr(getattr(cfg.UNSUP, section), key, value)
    with pytest.raises(ValueError, match=message):
        build_memory_head(cfg)


# ---- EMA teacher ------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self, seed):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.register_buffer("memory", torch.randn(2, 4), persistent=False)


def test_ema_update_arithmetic():
    teacher, student = Tiny(0), Tiny(1)
    student.bn(student.fc(torch.randn(8, 3)))  # a training-mode pass: running stats move, count 1
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher_memory = teacher.memory.clone()
    ema_update_(teacher, student, 0.9)
    after, s = teacher.state_dict(), student.state_dict()
    for name in ("fc.weight", "fc.bias", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"):
        torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * s[name])
    assert int(after["bn.num_batches_tracked"]) == int(s["bn.num_batches_tracked"]) == 1
    assert torch.equal(teacher.memory, teacher_memory)  # non-persistent buffers are not averaged


def test_ema_update_converges_and_keeps_equal_entries_exact():
    teacher, student = Tiny(0), Tiny(1)
    for _ in range(200):
        ema_update_(teacher, student, 0.9)
    for name, value in student.state_dict().items():
        torch.testing.assert_close(teacher.state_dict()[name], value, atol=1e-6, rtol=0)
    twin = Tiny(1)
    for _ in range(1000):
        ema_update_(twin, student, 0.999)
    for name, value in student.state_dict().items():
        assert torch.equal(twin.state_dict()[name], value)


def test_ema_update_rejects_different_models():
    with pytest.raises(ValueError, match="differ"):
        ema_update_(Tiny(0), nn.Linear(3, 4), 0.999)


def test_ema_update_of_parameters_only_leaves_the_teachers_buffers():
    """TEACHER_BN "forward" (the authors' _update_ema_variables): parameters averaged, running
    statistics and the batch count stay the teacher's own."""
    teacher, student = Tiny(0), Tiny(1)
    student.bn(student.fc(torch.randn(8, 3)))
    teacher.bn(teacher.fc(torch.randn(8, 3)))
    teacher.bn(teacher.fc(torch.randn(8, 3)))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update_(teacher, student, 0.9, buffers=False)
    after, s = teacher.state_dict(), student.state_dict()
    for name in ("fc.weight", "fc.bias", "bn.weight", "bn.bias"):
        torch.testing.assert_close(after[name], 0.9 * before[name] + 0.1 * s[name])
    for name in ("bn.running_mean", "bn.running_var", "bn.num_batches_tracked"):
        assert torch.equal(after[name], before[name]), name
    assert int(after["bn.num_batches_tracked"]) == 2


def test_teacher_forward_moves_running_statistics_only_and_leaves_eval_mode():
    """The teacher forward of TEACHER_BN "forward": a training-mode pass of backbone and neck on
    the given (already normalised) images, grouped like the student's BatchNorm; output
    unused, parameters untouched, teacher back in eval mode."""
    from dcmip.modeling.batch_norm import convert_group_batchnorm
    from dcmip.modeling.ema import teacher_forward_

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.heads = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.BatchNorm2d(4))

    images = torch.randn(8, 3, 6, 5)
    teacher = convert_group_batchnorm(Model(), 4).eval()
    params = [p.clone() for p in teacher.parameters()]
    teacher_forward_(teacher, images)
    assert not teacher.training
    assert all(torch.equal(p, q) for p, q in zip(params, teacher.parameters()))
    reference = Model().train()  # the first group of 4, as DataParallel's device-0 replica
    with torch.no_grad():
        reference.heads(reference.backbone(images[:4]))
    for (name, ours), theirs in zip(teacher.named_buffers(), reference.buffers()):
        torch.testing.assert_close(ours, theirs, msg=name)
    assert int(teacher.backbone[1].num_batches_tracked) == 1
