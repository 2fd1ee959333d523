"""O2CAP (METHODS §2): the pure losses on hand-made cases, the head against the per-image
oracle of tests/naive_o2cap.py, the memory update, the statistics, the samplers, the configs."""
import glob
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from dcmip.memory import build_memory_head
from dcmip.memory.o2cap.head import CameraAwareProxyMemory
from dcmip.memory.o2cap.functional import (ProxySet, association_statistics, balanced_query, base2_loss, base_loss,
                                contrast_with_hard_negatives, group_table, hard_negative_candidates, intra_loss, merge_loss,
                                merged_positives, offline_loss, offline_positives, online_loss,
                                online_positives, per_camera_mean, memory_scores)
from dcmip.sampling import build_sampler
from dcmip.structures import PseudoLabels
from fastreid.config import get_cfg
from naive_o2cap import (NaiveO2CAPHead, naive_association_statistics, naive_camera_reduction,
                         naive_camera_winners, naive_multi_positive, naive_update_)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs", "O2CAP")

# Table II: row -> (losses, sampler). PB sampling = ProxyBalancedSampler.
TABLE_II = {
    "baseline1": (("base",), "ClusterBalancedSampler"),
    "baseline2": (("base2",), "ClusterBalancedSampler"),
    "cap1": (("intra",), "ClusterBalancedSampler"),
    "cap2": (("intra",), "ProxyBalancedSampler"),
    "cap3": (("offline",), "ClusterBalancedSampler"),
    "cap4": (("offline",), "ProxyBalancedSampler"),
    "cap5": (("intra", "offline"), "ClusterBalancedSampler"),
    "cap": (("intra", "offline"), "ProxyBalancedSampler"),
    "o2cap1": (("intra", "offline", "online"), "ProxyBalancedSampler"),
    "o2cap": (("offline", "online"), "ProxyBalancedSampler"),
    "o2cap2": (("online",), "ProxyBalancedSampler"),
    "o2cap3": (("merge",), "ProxyBalancedSampler"),
}


def ps(index, valid):
    return ProxySet(torch.tensor(index), torch.tensor(valid))


def contrast(scores, positives, rank, k1):
    """The contrastive term with its negatives ranked by ``rank``."""
    return contrast_with_hard_negatives(scores, positives, hard_negative_candidates(rank, k1, positives), k1)


def make_cfg(losses=("offline", "online"), **o2cap):
    cfg = add_dcmip_config(get_cfg())
    cfg.UNSUP.MEMORY.NAME = "CameraAwareProxyMemory"
    cfg.UNSUP.MEMORY.TEMP = 0.07
    cfg.UNSUP.MEMORY.MOMENTUM = 0.2
    cfg.UNSUP.O2CAP.LOSSES = tuple(losses)
    for key, value in o2cap.items():
        cfg.UNSUP.O2CAP[key] = value
    return cfg


def make_pseudo(num_images=240, num_clusters=16, num_cams=5, dim=12, seed=0, num_ids=20):
    """Random clusters and cameras; proxies = the (cluster, camera) pairs present, numbered."""
    g = torch.Generator().manual_seed(seed)
    clusters = torch.randint(0, num_clusters, (num_images,), generator=g)
    clusters = torch.unique(clusters, return_inverse=True)[1]
    cams = torch.randint(0, num_cams, (num_images,), generator=g)
    proxies = torch.unique(clusters * num_cams + cams, return_inverse=True)[1]
    features = F.normalize(torch.randn(num_images, dim, generator=g, dtype=torch.float64), dim=1)
    true_ids = torch.randint(100, 100 + num_ids, (num_images,), generator=g)
    return PseudoLabels(features, clusters, cams, proxies, torch.arange(num_images), true_ids=true_ids)


def random_steps(pseudo, num_steps, batch=32, seed=1):
    """Batches of 8 proxies x 4 images (rows drawn with replacement inside the proxy), then
    shuffled, so that repeated proxies interleave in batch order."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(num_steps):
        chosen = torch.randperm(pseudo.num_proxies, generator=g)[:batch // 4]
        rows = []
        for z in chosen.tolist():
            members = torch.nonzero(pseudo.proxies == z).flatten()
            rows += members[torch.randint(0, len(members), (4,), generator=g)].tolist()
        rows = torch.tensor(rows)[torch.randperm(batch, generator=g)]
        features = F.normalize(torch.randn(batch, pseudo.features.shape[1], generator=g, dtype=torch.float64), dim=1)
        steps.append((rows, features))
    return steps


def assert_steps_match_the_oracle(head, naive, pseudo, steps, prepare=lambda batch: batch):
    """Step by step (``random_steps``), the head against the per-image oracle of
    tests/naive_o2cap.py: the losses and their gradient (1e-10), then the memories after both
    updates (1e-12). ``prepare`` adds to each batch what the collation would (e.g. groups)."""
    for rows, features in steps:
        batch = prepare(batch_of(pseudo, rows))
        f = features.clone().requires_grad_()
        ours = head(f, batch)
        grad, = torch.autograd.grad(sum(ours.values()), f)
        f_naive = features.clone().requires_grad_()
        expected = naive.forward(f_naive, batch["clusters"], batch["proxies"], batch["camids"])
        expected_grad, = torch.autograd.grad(sum(expected.values()), f_naive)
        assert ours.keys() == expected.keys()
        for name in expected:
            assert ours[name].item() == pytest.approx(expected[name].item(), abs=1e-10), name
        torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=0)
        head.update(features, batch)
        naive.update(features, batch["clusters"], batch["proxies"])
        if head.uses_proxies:
            torch.testing.assert_close(head.proxy_memory, naive.proxy_memory, atol=1e-12, rtol=0)
        if head.uses_clusters:
            torch.testing.assert_close(head.cluster_memory, naive.cluster_memory, atol=1e-12, rtol=0)


def batch_of(pseudo, rows, multiplicity=True):
    batch = {"clusters": pseudo.clusters[rows], "proxies": pseudo.proxies[rows], "camids": pseudo.cams[rows],
             "index": rows}
    if multiplicity:
        batch["multiplicity"] = {"clusters": len(rows), "proxies": 4}
    return batch


# ---- pure functions on hand-made cases ---------------------------------------------------------

def test_per_camera_mean_known_case():
    """Cameras 0, 1, 2 present (3 absent): (1 + 2) / 2 + 3 + 10."""
    loss = per_camera_mean(torch.tensor([1.0, 2.0, 3.0, 10.0]), torch.tensor([0, 0, 1, 2]), num_cams=4)
    assert loss.item() == pytest.approx(14.5)


def test_per_camera_mean_matches_loop():
    g = torch.Generator().manual_seed(0)
    terms, cams = torch.rand(20, generator=g, dtype=torch.float64), torch.randint(0, 6, (20,), generator=g)
    expected = naive_camera_reduction(list(terms), cams.tolist())
    assert per_camera_mean(terms, cams, 6).item() == pytest.approx(float(expected), abs=1e-12)


def test_contrast_picks_the_hardest_negative():
    """P = {0}, K1 = 1: Q is the best-ranked other proxy (score 5), so ℓ = log(1 + e^5)."""
    scores = torch.tensor([[0.0, 5.0, -100.0, 1.0]])
    loss = contrast(scores, ps([[0]], [[True]]), scores, k1=1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(5)))


def test_contrast_with_two_positives():
    """Equal scores, |P| = 2, K1 = 1: every log-probability is log(1/3)."""
    scores = torch.zeros(1, 4)
    loss = contrast(scores, ps([[0, 1]], [[True, True]]), scores, k1=1)
    assert loss.item() == pytest.approx(math.log(3))


def test_contrast_negatives_ranked_by_another_similarity():
    """The rank picks proxy 2 although proxy 1 scores higher: ℓ = log(1 + e^-1)."""
    scores = torch.tensor([[0.0, 5.0, -1.0]])
    rank = torch.tensor([[0.0, 0.0, 1.0]])
    loss = contrast(scores, ps([[0]], [[True]]), rank, k1=1)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)))


def test_k1_larger_than_the_negatives_available():
    """K1 = 50 > 2 negatives: Q is both of them, the softmax runs over all 4 proxies."""
    scores = torch.tensor([[0.3, -0.2, 1.1, 0.5]], dtype=torch.float64)
    loss = contrast(scores, ps([[0, 2]], [[True, True]]), scores, k1=50)
    expected = torch.logsumexp(scores[0], 0) - (scores[0, 0] + scores[0, 2]) / 2
    assert loss.item() == pytest.approx(expected.item())


def test_no_negatives_at_all_gives_zero_and_a_finite_gradient():
    """A single proxy in total (Z = 1): ℓ = -log 1 = 0."""
    scores = torch.tensor([[2.0]], requires_grad=True)
    loss = contrast(scores, ps([[0]], [[True]]), scores.detach(), k1=50)
    loss.sum().backward()
    assert loss.item() == 0.0 and torch.equal(scores.grad, torch.zeros(1, 1))


def test_invalid_positive_slots_are_ignored():
    """A padded slot (repeating slot 0) neither counts as a positive nor masks a negative."""
    scores = torch.tensor([[0.0, 5.0, 1.0]])
    padded = contrast(scores, ps([[0, 0]], [[True, False]]), scores, k1=2)
    plain = contrast(scores, ps([[0]], [[True]]), scores, k1=2)
    assert padded.item() == pytest.approx(plain.item())


def test_group_table_and_offline_positives():
    table = group_table(torch.tensor([0, 1, 0, 2, 1]), num_groups=3)
    assert table.index.tolist() == [[0, 2], [1, 4], [3, 3]]
    assert table.valid.tolist() == [[True, True], [True, True], [True, False]]
    p1 = offline_positives(torch.tensor([2, 0]), table)
    assert p1.index.tolist() == [[3, 3], [0, 2]] and p1.valid.tolist() == [[True, False], [True, True]]
    # A group without proxies (camera 1 here) has no valid slot.
    assert group_table(torch.tensor([0, 2, 0]), num_groups=3).valid.tolist() == [[True, True], [False, False],
                                                                                 [True, False]]


def test_single_proxy_cluster_offline_loss():
    """Cluster 1 has one proxy (2): P1 = {2}, Q1 = the K1 = 2 best of the others."""
    proxy_cluster = torch.tensor([0, 0, 1, 2, 3])
    scores = torch.tensor([[1.0, 0.5, 2.0, -1.0, 0.7]], dtype=torch.float64)
    p1 = offline_positives(torch.tensor([1]), group_table(proxy_cluster, 4))
    loss = offline_loss(scores, p1, hard_negative_candidates(scores, 2, p1), k1=2)
    expected = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.0) + math.exp(0.7)))
    assert loss.item() == pytest.approx(expected)


def test_balanced_query_known_case():
    """b_j = w f·K'[j] + (1-w) K'[z̃]·K'[j] with orthonormal proxies."""
    memory = torch.eye(3)
    f = torch.tensor([[0.6, 0.8, 0.0]])
    b = balanced_query(f, memory, torch.tensor([2]), weight=0.25) @ memory.t()
    assert b.tolist() == [[pytest.approx(0.15), pytest.approx(0.2), pytest.approx(0.75)]]


def test_scores_with_queries_share_one_matmul_and_the_gradient():
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(7, 4, generator=g, dtype=torch.float64)
    f = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    queries = torch.randn(2, 4, generator=g, dtype=torch.float64)
    scores, similarities = memory_scores(f, memory, 0.5, queries)
    assert torch.allclose(scores, f @ memory.t() / 0.5) and torch.allclose(similarities, queries @ memory.t())
    assert not similarities.requires_grad
    assert torch.autograd.gradcheck(lambda x: memory_scores(x, memory, 0.5, queries)[0], (f,))


def test_online_positives_one_winner_per_camera():
    """Cameras [0, 0, 1, 1, 2]: winners 0 (0.9), 3 (0.5), 4 (0.7); K2 = 2 keeps 0 and 4."""
    b = torch.tensor([[0.9, 0.8, 0.1, 0.5, 0.7]])
    proxy_cam = torch.tensor([0, 0, 1, 1, 2])
    p2 = online_positives(b, group_table(proxy_cam, 3), k2=2)
    assert p2.index.tolist() == [[0, 4]] and p2.valid.all()


def test_online_positives_tie_goes_to_the_lowest_index():
    b = torch.tensor([[0.5, 0.9, 0.9, 0.1]])
    p2 = online_positives(b, group_table(torch.tensor([1, 0, 0, 1]), 2), k2=1)
    assert p2.index.tolist() == [[1]]


def test_online_positives_with_fewer_cameras_than_k2():
    """Camera 3 has no proxy: K2 = 4 yields the three winners, the fourth slot is padding."""
    b = torch.tensor([[0.9, 0.8, 0.1, 0.5, 0.7]])
    p2 = online_positives(b, group_table(torch.tensor([0, 0, 1, 1, 2]), 4), k2=4)
    assert p2.index.tolist() == [[0, 4, 3, 0]]
    assert p2.valid.tolist() == [[True, True, True, False]]


@pytest.mark.parametrize("proxy_cam", [[0, 0, 1, 1, 2, 3, 3, 2], [0, 2, 0, 2, 2, 0, 3, 0]])
def test_online_positives_with_the_filled_count_known(proxy_cam):
    """Given the number of cameras with proxies (known on the host), the masking and validity
    operations it makes unnecessary are skipped; P2 is the same, with and without an empty
    camera (camera 1 in the second table), for K2 below, at and above the filled count."""
    proxy_cam = torch.tensor(proxy_cam)
    table = group_table(proxy_cam, 4)
    filled = len(proxy_cam.unique())
    b = torch.randn(6, len(proxy_cam), generator=torch.Generator().manual_seed(filled))
    for k2 in range(1, 6):
        expected = online_positives(b, table, k2)
        p2 = online_positives(b, table, k2, filled=filled)
        assert torch.equal(p2.index, expected.index) and torch.equal(p2.valid, expected.valid), k2


def test_merged_positives_union():
    """P1 = {0, 2} (cluster 0), P2 = {2, 3}: P3 = {0, 2, 3}."""
    proxy_cluster = torch.tensor([0, 1, 0, 1])
    p1 = ps([[0, 2]], [[True, True]])
    p2 = ps([[2, 3]], [[True, True]])
    p3 = merged_positives(p1, p2, torch.tensor([0]), proxy_cluster)
    members = {i for i, v in zip(p3.index[0].tolist(), p3.valid[0].tolist()) if v}
    assert members == {0, 2, 3} and p3.index[0, 0] == 0
    scores = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    # Everything is positive but proxy 1: ℓ = log(4) with K1 = 1.
    assert merge_loss(scores, p3, hard_negative_candidates(scores, 1, p3), k1=1).item() == pytest.approx(math.log(4))


def test_intra_loss_known_case():
    """Own camera holds proxies 0 and 1, equal scores; proxy 2 (other camera) is ignored."""
    scores = torch.tensor([[0.0, 0.0, 100.0]])
    loss = intra_loss(scores, torch.tensor([0]), torch.tensor([0]), torch.tensor([0, 0, 1]))
    assert loss.item() == pytest.approx(math.log(2))


def test_base_losses_known_cases():
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0]])
    y = torch.tensor([0])
    assert base_loss(scores, y).item() == pytest.approx(math.log(1 + math.exp(3) + math.exp(1) + math.exp(2)))
    # Q0 = the 2 best other clusters (3 and 2).
    assert base2_loss(scores, y, k1=2).item() == pytest.approx(math.log(1 + math.exp(3) + math.exp(2)))


# ---- pure functions against the per-image oracle -----------------------------------------------

@pytest.mark.parametrize("k1", [5, 500])
@pytest.mark.parametrize("negatives", ["instance", "balanced"])
def test_per_image_terms_and_gradients_match_the_oracle(k1, negatives):
    pseudo = make_pseudo()
    g = torch.Generator().manual_seed(3)
    memory = F.normalize(torch.randn(pseudo.num_proxies, 12, generator=g, dtype=torch.float64), dim=1)
    rows = torch.randint(0, 240, (32,), generator=g)
    f = F.normalize(torch.randn(32, 12, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    y, z = pseudo.clusters[rows], pseudo.proxies[rows]
    proxy_cluster, proxy_cam = pseudo.proxy_to_cluster(), pseudo.proxy_to_cam()
    scores, b = memory_scores(f, memory, 0.07, balanced_query(f, memory, z, 0.15))
    p1 = offline_positives(y, group_table(proxy_cluster, pseudo.num_clusters))
    p2 = online_positives(b, group_table(proxy_cam, 5), 3)
    rank = scores.detach() if negatives == "instance" else b
    p3 = merged_positives(p1, p2, y, proxy_cluster)
    ours = {"offline": offline_loss(scores, p1, hard_negative_candidates(scores.detach(), k1, p1), k1),
            "online": online_loss(scores, p2, hard_negative_candidates(rank, k1, p2), k1),
            "merge": merge_loss(scores, p3, hard_negative_candidates(scores.detach(), k1, p3), k1)}
    members = [torch.nonzero(proxy_cam == c).flatten() for c in range(5)]
    for name, values in ours.items():
        f.grad = None
        values.sum().backward(retain_graph=True)
        ours_grad = f.grad.clone()
        f.grad = None
        total = 0
        for i in range(32):
            s = scores[i]
            inst = (s * 0.07).detach()
            pos1 = torch.nonzero(proxy_cluster == y[i]).flatten().tolist()
            bi = 0.15 * inst + 0.85 * (memory[z[i]] @ memory.t())
            pos2 = naive_camera_winners(bi, members, 3)
            if name == "offline":
                term = naive_multi_positive(s, pos1, inst, k1)
            elif name == "online":
                term = naive_multi_positive(s, pos2, inst if negatives == "instance" else bi, k1)
            else:
                term = naive_multi_positive(s, sorted(set(pos1) | set(pos2)), inst, k1)
            assert values[i].item() == pytest.approx(term.item(), abs=1e-10), (name, i)
            total = total + term
        total.backward(retain_graph=True)
        assert torch.allclose(ours_grad, f.grad, atol=1e-10), name


# ---- the head against the per-image head ------------------------------------------------------

ROWS_TO_CHECK = [(row, losses, "instance", "mean") for row, (losses, _) in TABLE_II.items()] + [
    ("o2cap_balanced_negatives", ("offline", "online"), "balanced", "mean"),
    ("baselines_per_camera", ("base", "base2"), "instance", "per_camera")]


@pytest.mark.parametrize("row,losses,negatives,reduction", ROWS_TO_CHECK, ids=[r[0] for r in ROWS_TO_CHECK])
def test_head_matches_the_per_image_head(row, losses, negatives, reduction):
    """Three training steps: losses and their gradients (float64, <= 1e-5 and in fact ~1e-12),
    and the memories after each update."""
    pseudo = make_pseudo()
    k1 = 10
    head = CameraAwareProxyMemory(make_cfg(losses, HARD_NEGATIVES=k1, ONLINE_NEGATIVES=negatives,
                                           BASELINE_REDUCTION=reduction))
    head.reset(pseudo)
    naive = NaiveO2CAPHead(losses, k1=k1, negatives=negatives, baseline_reduction=reduction)
    naive.reset(pseudo.features, pseudo.clusters, pseudo.proxies, pseudo.cams)
    assert_steps_match_the_oracle(head, naive, pseudo, random_steps(pseudo, 3))


def test_float32_head_matches_within_1e_5():
    pseudo = make_pseudo(seed=4)
    pseudo.features = pseudo.features.float()
    head = CameraAwareProxyMemory(make_cfg(("intra", "offline", "online")))
    head.reset(pseudo)
    naive = NaiveO2CAPHead(("intra", "offline", "online"))
    naive.reset(pseudo.features.double(), pseudo.clusters, pseudo.proxies, pseudo.cams)
    rows, features = random_steps(pseudo, 1)[0]
    f = features.float().requires_grad_()
    ours = head(f, batch_of(pseudo, rows))
    grad, = torch.autograd.grad(sum(ours.values()), f)
    f64 = features.clone().requires_grad_()
    expected = naive.forward(f64, pseudo.clusters[rows], pseudo.proxies[rows], pseudo.cams[rows])
    expected_grad, = torch.autograd.grad(sum(expected.values()), f64)
    for name in ours:
        assert ours[name].item() == pytest.approx(expected[name].item(), rel=1e-5)
    assert torch.allclose(grad.double(), expected_grad, atol=1e-5)


@pytest.mark.parametrize("multiplicity", [True, False])
def test_memory_update_matches_the_sequential_loop(multiplicity):
    """Repeated proxies and clusters interleaved in batch order; with and without the host-side
    multiplicity bound."""
    pseudo = make_pseudo()
    head = CameraAwareProxyMemory(make_cfg(("offline", "base")))
    head.reset(pseudo)
    proxy_memory, cluster_memory = head.proxy_memory.clone(), head.cluster_memory.clone()
    for rows, features in random_steps(pseudo, 2):
        head.update(features, batch_of(pseudo, rows, multiplicity))
        naive_update_(proxy_memory, features, pseudo.proxies[rows], 0.2)
        naive_update_(cluster_memory, features, pseudo.clusters[rows], 0.2)
    assert torch.allclose(head.proxy_memory, proxy_memory, atol=1e-12)
    assert torch.allclose(head.cluster_memory, cluster_memory, atol=1e-12)


def test_reset_rebuilds_the_memory_from_epoch_start_features():
    pseudo = make_pseudo()
    head = CameraAwareProxyMemory(make_cfg())
    head.reset(pseudo)
    rows, features = random_steps(pseudo, 1)[0]
    head.update(features, batch_of(pseudo, rows))
    head.reset(pseudo)
    z = 3
    expected = F.normalize(pseudo.features[pseudo.proxies == z].mean(0), dim=0)
    assert torch.allclose(head.proxy_memory[z], expected, atol=1e-12)
    assert head.proxy_memory.shape == (pseudo.num_proxies, 12)


def test_one_camera_only():
    """A single camera: one proxy per cluster, P2 is the single best proxy, the reduction is the
    batch mean; every loss still matches the oracle."""
    pseudo = make_pseudo(num_cams=1)
    assert pseudo.num_proxies == pseudo.num_clusters
    losses = ("intra", "offline", "online", "merge")
    head = CameraAwareProxyMemory(make_cfg(losses, HARD_NEGATIVES=10))
    head.reset(pseudo)
    naive = NaiveO2CAPHead(losses, k1=10)
    naive.reset(pseudo.features, pseudo.clusters, pseudo.proxies, pseudo.cams)
    rows, features = random_steps(pseudo, 1)[0]
    ours = head(features, batch_of(pseudo, rows))
    expected = naive.forward(features, pseudo.clusters[rows], pseudo.proxies[rows], pseudo.cams[rows])
    for name in losses:
        assert ours[f"loss_{name}"].item() == pytest.approx(expected[f"loss_{name}"].item(), abs=1e-10)
    b = balanced_query(features, head.proxy_memory, pseudo.proxies[rows], 0.15) @ head.proxy_memory.t()
    p2 = online_positives(b, group_table(head.proxy_cam, 1), 3)
    assert p2.index.shape == (32, 1) and torch.equal(p2.index[:, 0], b.argmax(dim=1))


# ---- association statistics (Fig. 5) ----------------------------------------------------------

def test_association_statistics_known_case():
    """P1 = {0, 1}, P2 = {1, 2}; true positives {1, 2, 3}: IoU 1/3, precisions 1/2, 1, 2/3,
    recalls 1/3, 2/3, 2/3."""
    proxy_cluster = torch.tensor([0, 0, 1, 2])
    proxy_true_id = torch.tensor([5, 7, 7, 7])
    sums, counts = association_statistics(ps([[0, 1]], [[True, True]]), ps([[1, 2]], [[True, True]]),
                                          torch.tensor([0]), proxy_cluster, torch.tensor([7]),
                                          proxy_true_id, torch.tensor([3]))
    expected = [1 / 3, 1 / 2, 1.0, 2 / 3, 1 / 3, 2 / 3, 2 / 3]
    assert (sums / counts).tolist() == pytest.approx(expected)


def test_epoch_statistics_match_the_oracle():
    pseudo = make_pseudo(num_ids=12)
    head = CameraAwareProxyMemory(make_cfg(("offline", "online"), HARD_NEGATIVES=10))
    head.reset(pseudo)
    naive = NaiveO2CAPHead(("offline", "online"), k1=10)
    naive.reset(pseudo.features, pseudo.clusters, pseudo.proxies, pseudo.cams, pseudo.true_ids)
    associations, index = [], []
    for step, (rows, features) in enumerate(random_steps(pseudo, 3)):
        batch = batch_of(pseudo, rows)
        head(features, batch)
        naive.forward(features, batch["clusters"], batch["proxies"], batch["camids"])
        associations += [(i + 32 * step, p1, p2) for i, p1, p2 in naive.association]
        index += rows.tolist()
        head.update(features, batch)
        naive.update(features, batch["clusters"], batch["proxies"])
    ours = head.epoch_statistics()
    expected = naive_association_statistics(associations, pseudo.true_ids, naive.proxy_true_id, index)
    assert ours == pytest.approx({f"association/{k}": v for k, v in expected.items()}, abs=1e-12)
    assert head.epoch_statistics() == {}  # read-out resets the accumulators


def test_epoch_statistics_without_true_identities():
    pseudo = make_pseudo()
    pseudo.true_ids = None
    head = CameraAwareProxyMemory(make_cfg())
    head.reset(pseudo)
    rows, features = random_steps(pseudo, 1)[0]
    head(features, batch_of(pseudo, rows))
    assert list(head.epoch_statistics()) == ["association/iou"]


# ---- no host-device synchronisation in a step --------------------------------------------------

# Ops that read a value back to the host or whose output shape depends on the data.
SYNCING_OPS = {"aten._local_scalar_dense", "aten.nonzero", "aten._unique2", "aten.unique_dim",
               "aten.unique_consecutive", "aten.masked_select", "aten.bincount", "aten.repeat_interleave",
               "bool-mask index"}


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        bool_index = func is torch.ops.aten.index.Tensor and any(
            t is not None and t.dtype == torch.bool for t in args[1])
        self.ops.append("bool-mask index" if bool_index else str(func.overloadpacket))
        return func(*args, **kwargs)


@pytest.mark.parametrize("losses", [("intra", "offline", "online", "merge"), ("base", "base2")])
def test_a_training_step_has_no_host_sync(losses):
    """Forward, backward and update dispatch no op that reads a value back to the host or whose
    output shape depends on the data (.item, nonzero, unique, boolean-mask indexing...)."""
    pseudo = make_pseudo()
    head = CameraAwareProxyMemory(make_cfg(losses))
    head.reset(pseudo)
    rows, features = random_steps(pseudo, 1)[0]
    batch = batch_of(pseudo, rows)
    f = features.clone().requires_grad_()
    with _RecordOps() as recorder:
        sum(head(f, batch).values()).backward()
        head.update(f.detach(), batch)
    assert not SYNCING_OPS & set(recorder.ops)
    assert "aten.topk" in recorder.ops  # the recorder saw the step


# ---- samplers ---------------------------------------------------------------------------------

def test_proxy_balanced_sampler_batches():
    """8 proxies x 4 images per batch of 32; 4 distinct images when the proxy has >= 4."""
    g = torch.Generator().manual_seed(0)
    sizes = torch.randint(1, 9, (40,), generator=g)  # 40 proxies, 1-8 images each
    proxies = torch.arange(40).repeat_interleave(sizes)
    n = len(proxies)
    pseudo = PseudoLabels(torch.zeros(n, 2), proxies // 3, proxies % 3, proxies, torch.arange(n))
    cfg = make_cfg()
    cfg.UNSUP.SAMPLER.NAME = "ProxyBalancedSampler"
    cfg.SOLVER.IMS_PER_BATCH = 32
    stream = iter(build_sampler(cfg, pseudo, seed=0))
    for _ in range(15):  # 3 passes over the 40 proxies
        batch = np.array([next(stream) for _ in range(32)])
        groups = batch.reshape(8, 4)
        group_proxies = proxies[groups].numpy()
        assert (group_proxies == group_proxies[:, :1]).all()
        assert len(set(group_proxies[:, 0])) == 8
        for rows, z in zip(groups, group_proxies[:, 0]):
            if sizes[z] >= 4:
                assert len(set(rows)) == 4


def test_cluster_balanced_sampler_batches():
    clusters = torch.arange(16).repeat_interleave(6)
    n = len(clusters)
    pseudo = PseudoLabels(torch.zeros(n, 2), clusters, torch.arange(n) % 3, clusters * 3 + torch.arange(n) % 3,
                          torch.arange(n))
    cfg = make_cfg()
    cfg.UNSUP.SAMPLER.NAME = "ClusterBalancedSampler"
    cfg.SOLVER.IMS_PER_BATCH = 32
    stream = iter(build_sampler(cfg, pseudo, seed=0))
    groups = np.array([next(stream) for _ in range(64)]).reshape(16, 4)
    group_clusters = clusters[groups].numpy()
    assert (group_clusters == group_clusters[:, :1]).all()
    assert all(len(set(rows)) == 4 for rows in groups)


# ---- config ------------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,message", [
    ("LOSSES", ("offline", "inter"), "UNSUP.O2CAP.LOSSES"),
    ("LOSSES", (), "UNSUP.O2CAP.LOSSES"),
    ("LOSSES", ("offline", "offline"), "UNSUP.O2CAP.LOSSES"),
    ("ONLINE_NEGATIVES", "hard", "UNSUP.O2CAP.ONLINE_NEGATIVES"),
    ("HARD_NEGATIVES", 0, "UNSUP.O2CAP.HARD_NEGATIVES"),
    ("ONLINE_POSITIVES", 0, "UNSUP.O2CAP.ONLINE_POSITIVES"),
    ("BALANCE_WEIGHT", 1.5, "UNSUP.O2CAP.BALANCE_WEIGHT"),
    ("BASELINE_REDUCTION", "sum", "UNSUP.O2CAP.BASELINE_REDUCTION.*per_camera"),
])
def test_bad_config_values_name_the_key_and_the_choices(key, value, message):
    cfg = make_cfg()
    cfg.UNSUP.O2CAP[key] = value
    with pytest.raises(ValueError, match=message) as error:
        CameraAwareProxyMemory(cfg)
    if key == "ONLINE_NEGATIVES":
        assert "instance" in str(error.value) and "balanced" in str(error.value)
    if key == "LOSSES":
        assert "merge" in str(error.value)


def load(path):
    cfg = add_dcmip_config(get_cfg())
    cfg.merge_from_file(path)
    return cfg


def test_every_o2cap_config_builds_the_head():
    paths = sorted(glob.glob(os.path.join(CONFIGS, "**", "*.yml"), recursive=True))
    assert len(paths) >= 23
    for path in paths:
        cfg = load(path)
        assert isinstance(build_memory_head(cfg), CameraAwareProxyMemory), path
        assert (cfg.UNSUP.MEMORY.TEMP, cfg.UNSUP.MEMORY.MOMENTUM) == (0.07, 0.2), path
        assert (cfg.SOLVER.IMS_PER_BATCH, cfg.UNSUP.SAMPLER.NUM_INSTANCES) == (32, 4), path
        assert (cfg.UNSUP.O2CAP.HARD_NEGATIVES, cfg.UNSUP.O2CAP.BALANCE_WEIGHT) == (50, 0.15), path


@pytest.mark.parametrize("row", sorted(TABLE_II))
def test_table_ii_rows_are_configs(row):
    cfg = load(os.path.join(CONFIGS, "ablation", f"{row}.yml"))
    losses, sampler = TABLE_II[row]
    assert tuple(cfg.UNSUP.O2CAP.LOSSES) == losses
    assert cfg.UNSUP.SAMPLER.NAME == sampler


@pytest.mark.parametrize("name,dataset,k2", [("market", "Market1501", 3), ("dukemtmc", "DukeMTMC", 2),
                                             ("msmt17", "MSMT17TrainVal", 3), ("veri", "VeRi", 8)])
def test_dataset_configs(name, dataset, k2):
    for suffix in ("", "_ibn_gem"):
        cfg = load(os.path.join(CONFIGS, f"{name}{suffix}.yml"))
        assert cfg.DATASETS.NAMES == (dataset,) and cfg.UNSUP.O2CAP.ONLINE_POSITIVES == k2
        assert tuple(cfg.UNSUP.O2CAP.LOSSES) == ("offline", "online")
        assert cfg.UNSUP.O2CAP.ONLINE_NEGATIVES == "instance"
        assert (cfg.UNSUP.ITERS, cfg.SOLVER.MAX_EPOCH, list(cfg.SOLVER.STEPS)) == (400, 50, [20, 40])
        assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (4000, 0.01)
        assert (cfg.UNSUP.CLUSTER.K1, cfg.UNSUP.CLUSTER.K2, cfg.UNSUP.CLUSTER.EPS) == (20, 6, 0.5)
        assert cfg.MODEL.BACKBONE.WITH_IBN == (suffix == "_ibn_gem")
        pool = "GeneralizedMeanPoolingP" if suffix else "GlobalAvgPool"
        assert cfg.MODEL.HEADS.POOL_LAYER == pool


@pytest.mark.parametrize("name,dataset", [("demo_cpu", "DemoMarket"), ("market_split_cpu", "MarketSplit")])
def test_cpu_configs(name, dataset):
    cfg = load(os.path.join(CONFIGS, f"{name}.yml"))
    assert cfg.DATASETS.NAMES == (dataset,) and cfg.DATASETS.TESTS == (dataset,)
    assert cfg.MODEL.DEVICE == "cpu" and cfg.DATALOADER.NUM_WORKERS == 2
    assert cfg.MODEL.BACKBONE.NAME == "build_mobilenetv2_backbone"
    assert (cfg.MODEL.BACKBONE.DEPTH, cfg.MODEL.BACKBONE.FEAT_DIM) == ("1.0x", 1280)
    assert cfg.MODEL.BACKBONE.PRETRAIN_PATH == "weights/mobilenetv2_imagenet.pth"
    assert list(cfg.INPUT.SIZE_TRAIN) == [128, 64] and cfg.SOLVER.IMS_PER_BATCH == 32
    assert cfg.UNSUP.SAMPLER.NAME == "ProxyBalancedSampler"
