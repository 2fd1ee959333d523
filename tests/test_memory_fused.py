"""The fused paths of the memory heads (issue 11): the two-pass top-k, the stacked contrastive
terms with their direct gradient, the sparse score gradient, the per-distinct-proxy balanced
similarity and the step on the collation's LabelGroups, against plain PyTorch and the per-image
oracle of tests/naive_o2cap.py."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from dcmip.memory.o2cap.functional import (ProxySet, balanced_similarity, contrastive_terms, distinct_proxy_queries,
                                           merged_positives, offline_positives, online_positives,
                                           hard_negative_candidates, memory_scores, top_columns)
from dcmip.data.pseudo_dataset import group_batch
from dcmip.memory.o2cap.head import CameraAwareProxyMemory
from dcmip.structures import LabelGroups
from naive_o2cap import NaiveO2CAPHead, naive_multi_positive
from test_o2cap import (SYNCING_OPS, _RecordOps, assert_steps_match_the_oracle, batch_of, make_cfg, make_pseudo,
                        random_steps)


# ---- top_columns ------------------------------------------------------------------------------

@pytest.mark.parametrize("columns,k", [(4024, 56), (4031, 56), (4027, 9), (600, 56), (30, 30)])
def test_top_columns_is_topk(columns, k):
    """Two passes (columns a multiple of 8 or not) and the one-pass fallback (few columns)."""
    g = torch.Generator().manual_seed(columns)
    values = torch.randn(16, columns, generator=g)
    # Rows whose best entries sit in the leftover columns, and rows whose best entries share a group.
    values[0, -(columns % 8 or 1):] += 10
    values[1, torch.arange(0, columns, columns // 8)[:8]] += 10
    assert torch.equal(top_columns(values, k), values.topk(k, dim=1).indices)


# ---- contrastive_terms -----------------------------------------------------------------------

def random_sets(batch, columns, widths, generator):
    """ProxySets of distinct members, slot 0 valid, invalid slots repeating slot 0."""
    sets = []
    for width in widths:
        index = torch.stack([torch.randperm(columns, generator=generator)[:width] for _ in range(batch)])
        valid = torch.rand(batch, width, generator=generator) < 0.6
        valid[:, 0] = True
        sets.append(ProxySet(torch.where(valid, index, index[:, :1]), valid))
    return sets


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("k1", [3, 200])
def test_contrastive_terms_match_the_per_image_terms(sparse, k1):
    """Three positive sets of widths 4, 1, 6 sharing one candidate search: values and the
    gradient of any weighting of them, against per-image terms built from index lists."""
    g = torch.Generator().manual_seed(k1)
    batch, columns, d = 12, 40, 8
    memory = F.normalize(torch.randn(columns, d, generator=g, dtype=torch.float64), dim=1)
    f = F.normalize(torch.randn(batch, d, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    sets = random_sets(batch, columns, (4, 1, 6), g)
    scores = memory_scores(f, memory, 0.07, sparse=sparse)
    candidates = hard_negative_candidates(scores.detach(), k1, *sets)
    terms = contrastive_terms(scores, sets, candidates, k1)
    weights = torch.rand(len(sets), batch, generator=g, dtype=torch.float64)
    grad, = torch.autograd.grad((terms * weights).sum(), f)

    f_naive = f.detach().clone().requires_grad_()
    s = f_naive @ memory.t() / 0.07
    total = 0
    for l, p in enumerate(sets):
        for i in range(batch):
            members = p.index[i][p.valid[i]].tolist()
            expected = naive_multi_positive(s[i], members, s[i].detach(), k1)
            assert terms[l, i].item() == pytest.approx(expected.item(), abs=1e-12)
            total = total + weights[l, i] * expected
    expected_grad, = torch.autograd.grad(total, f_naive)
    torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)


def test_sparse_contrastive_terms_gradcheck():
    """The sparse path's gradient (read from the memory rows) against finite differences."""
    g = torch.Generator().manual_seed(0)
    memory = torch.randn(9, 4, generator=g, dtype=torch.float64)
    f = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    sets = random_sets(3, 9, (2, 3), g)
    scores = memory_scores(f, memory, 0.5, sparse=True)
    assert torch.allclose(scores.values, f.detach() @ memory.t() / 0.5)
    candidates = hard_negative_candidates(scores.values, 4, *sets)
    assert torch.autograd.gradcheck(
        lambda x: contrastive_terms(memory_scores(x, memory, 0.5, sparse=True), sets, candidates, 4), (f,))


# ---- Eq. 5 from the distinct proxies ----------------------------------------------------------

def test_balanced_similarity_from_distinct_proxies():
    """b_j = w f·K'[j] + (1-w) K'[z̃]·K'[j], from one query row per distinct z̃."""
    g = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(20, 6, generator=g, dtype=torch.float64), dim=1)
    f = F.normalize(torch.randn(10, 6, generator=g, dtype=torch.float64), dim=1)
    proxies = torch.tensor([7, 3, 7, 19, 3, 3, 0, 7, 19, 0])
    groups = LabelGroups.from_labels(proxies)
    queries = distinct_proxy_queries(memory, groups.labels, 0.15)
    assert queries.shape == (4, 6)
    torch.testing.assert_close(queries[groups.inverse], 0.85 * memory[proxies], atol=0, rtol=0)
    scores, similarities = memory_scores(f, memory, 0.07, queries, sparse=True)
    b = balanced_similarity(scores.values, similarities, groups.inverse, 0.07, 0.15)
    torch.testing.assert_close(b, 0.15 * f @ memory.t() + 0.85 * memory[proxies] @ memory.t(), atol=1e-14, rtol=0)


# (losses, ONLINE_NEGATIVES)
ROWS = [(("offline", "online"), "instance"), (("offline", "online"), "balanced"), (("merge",), "instance"),
        (("intra", "offline", "online"), "instance"), (("offline", "intra", "base2"), "instance")]


def grouped(batch):
    """The batch with the collation's host-side grouping by cluster, proxy and camera."""
    return {**batch, "groups": group_batch(batch)}


@pytest.mark.parametrize("losses,negatives", ROWS)
def test_head_with_label_groups_matches_the_per_image_head(losses, negatives):
    """With the collation's LabelGroups the head takes the per-distinct-proxy path and the
    grouped memory update: two steps of losses, gradients and memories as the oracle."""
    pseudo = make_pseudo(seed=5)
    head = CameraAwareProxyMemory(make_cfg(losses, HARD_NEGATIVES=10, ONLINE_NEGATIVES=negatives))
    head.reset(pseudo)
    naive = NaiveO2CAPHead(losses, k1=10, negatives=negatives)
    naive.reset(pseudo.features, pseudo.clusters, pseudo.proxies, pseudo.cams)
    assert_steps_match_the_oracle(head, naive, pseudo, random_steps(pseudo, 2, seed=7), prepare=grouped)


@pytest.mark.parametrize("camera_of", [{1: 2}, {1: 0, 2: 3, 4: 3}])
def test_head_with_empty_cameras_matches_the_per_image_head(camera_of):
    """Camera ids that no image carries leave cameras without proxies: the head then masks
    them (its filled count is below the number of cameras), and with two cameras left, fewer
    than K2 = 3, P2 has invalid slots. Losses, gradients and memories as the oracle's."""
    pseudo = make_pseudo(seed=5)
    cams = pseudo.cams.clone()
    for old, new in camera_of.items():
        cams[pseudo.cams == old] = new
    proxies = torch.unique(pseudo.clusters * 5 + cams, return_inverse=True)[1]
    pseudo = dataclasses.replace(pseudo, cams=cams, proxies=proxies)
    losses = ("offline", "online")
    head = CameraAwareProxyMemory(make_cfg(losses, HARD_NEGATIVES=10))
    head.reset(pseudo)
    assert head.cameras_filled == len(cams.unique()) < head.num_cams
    naive = NaiveO2CAPHead(losses, k1=10)
    naive.reset(pseudo.features, pseudo.clusters, pseudo.proxies, pseudo.cams)
    assert_steps_match_the_oracle(head, naive, pseudo, random_steps(pseudo, 2, seed=7), prepare=grouped)


def test_the_grouped_step_has_no_host_sync():
    """The per-distinct-proxy path, the sparse backward and the grouped update dispatch no op
    that reads a value back or has a data-dependent shape."""
    pseudo = make_pseudo()
    head = CameraAwareProxyMemory(make_cfg(("offline", "online", "merge")))
    head.reset(pseudo)
    rows, features = random_steps(pseudo, 1)[0]
    batch = grouped(batch_of(pseudo, rows))
    f = features.clone().requires_grad_()
    with _RecordOps() as recorder:
        sum(head(f, batch).values()).backward()
        head.update(f.detach(), batch)
    assert not SYNCING_OPS & set(recorder.ops)
    assert {"aten.index_copy_", "aten._embedding_bag_forward_only"} <= set(recorder.ops)  # the paths ran


@pytest.mark.parametrize("losses,negatives", [(("offline", "online"), "instance"), (("offline", "online"), "balanced"),
                                              (("merge",), "instance"), (("online",), "balanced")])
def test_the_heads_candidate_count_is_the_sets_widths(losses, negatives):
    """The head searches its hard negatives before it forms the positive sets, from their
    widths known in advance: K1 + the widest set ranked by that similarity, as
    hard_negative_candidates computes from the sets themselves."""
    pseudo = make_pseudo(seed=3)
    head = CameraAwareProxyMemory(make_cfg(losses, HARD_NEGATIVES=10, ONLINE_NEGATIVES=negatives))
    head.reset(pseudo)
    rows, _ = random_steps(pseudo, 1)[0]
    batch = batch_of(pseudo, rows)
    p1 = offline_positives(batch["clusters"], ProxySet(head.cluster_proxies, head.cluster_proxies_valid))
    p2 = online_positives(torch.randn(len(rows), len(head.proxy_memory), dtype=head.proxy_memory.dtype),
                          ProxySet(head.camera_proxies, head.camera_proxies_valid), head.k2)
    sets = {"offline": (p1, "instance"), "online": (p2, negatives),
            "merge": (merged_positives(p1, p2, batch["clusters"], head.proxy_cluster), "instance")}
    for ranking in ("instance", "balanced"):
        chosen = [p for name, (p, r) in sets.items() if name in losses and r == ranking]
        expected = hard_negative_candidates(head.proxy_memory.new_zeros(1, len(head.proxy_memory)), 10,
                                            *chosen).shape[1] if chosen else 0
        assert head._candidate_count(ranking) == expected
