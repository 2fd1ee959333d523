"""dcmip.evaluation: the blocked ranking metrics against fastreid's ``eval_market1501`` and a
naive per-query implementation, and the evaluator the trainer uses against fastreid's."""
import os
import types
from argparse import Namespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from dcmip.data.datasets import MarketSplit
from dcmip.engine.defaults import load_cfg
from dcmip.engine.trainer import UnsupervisedTrainer
from dcmip.evaluation import evaluate_rank
from dcmip.evaluation.evaluator import BlockedReidEvaluator, check_evaluator_config
from dcmip.registry import UserInputError
from fastreid.config import get_cfg
from fastreid.evaluation import ReidEvaluator
from fastreid.evaluation import rank as fastreid_rank
from fastreid.utils import comm
from fastreid.utils.compute_dist import build_dist
from test_train_e2e import workspace  # noqa: F401  (the fixture)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-6


def fastreid_metrics(qf, gf, qp, gp, qc, gc, metric="cosine", max_rank=50):
    """fastreid's Python path: build_dist + eval_market1501 -> (cmc, mAP, mINP, all_AP)."""
    dist = build_dist(qf, gf, metric)
    cmc, all_ap, all_inp = fastreid_rank.eval_market1501(dist, np.asarray(qp), np.asarray(gp), np.asarray(qc),
                                                         np.asarray(gc), max_rank)
    return cmc, float(np.mean(all_ap)), float(np.mean(all_inp)), np.asarray(all_ap)


class _StableArgsortNumpy(types.ModuleType):
    """numpy whose argsort is stable: fastreid's eval_market1501 under our tie rule."""

    def __init__(self):
        super().__init__("numpy")
        self.argsort = lambda a, axis=-1: np.argsort(a, axis=axis, kind="stable")

    def __getattr__(self, name):
        return getattr(np, name)


def naive_metrics(dist, qp, gp, qc, gc, max_rank=50):
    """From the definitions, one query at a time, stable order: (cmc, all_AP, all_INP), NaN for
    queries without a match."""
    cmcs, aps, inps = [], [], []
    for i in range(dist.shape[0]):
        order = np.argsort(dist[i], kind="stable")
        kept = order[~((gp[order] == qp[i]) & (gc[order] == qc[i]))]
        ranks = np.flatnonzero(gp[kept] == qp[i]) + 1
        if len(ranks) == 0:
            aps.append(np.nan)
            inps.append(np.nan)
            continue
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inps.append(len(ranks) / ranks[-1])
        cmcs.append(np.arange(1, min(max_rank, dist.shape[1]) + 1) >= ranks[0])
    return np.mean(cmcs, axis=0), np.array(aps), np.array(inps)


def random_case(seed, num_q=40, num_g=300, num_ids=30, num_cams=3, dim=16, quantised=None):
    """Identity-structured features; gallery with distractors (pid 0), same-id same-camera images
    and query ids absent from the gallery."""
    g = torch.Generator().manual_seed(seed)
    qp = torch.randint(1, num_ids + 5, (num_q,), generator=g)  # ids > num_ids: not in the gallery
    gp = torch.randint(0, num_ids + 1, (num_g,), generator=g)
    qc = torch.randint(0, num_cams, (num_q,), generator=g)
    gc = torch.randint(0, num_cams, (num_g,), generator=g)
    if quantised:
        return quantised_feats(qp, g, *quantised), quantised_feats(gp, g, *quantised), qp, gp, qc, gc
    centres = torch.randn(num_ids + 5, dim, generator=g)
    qf = F.normalize(centres[qp] + 0.8 * torch.randn(num_q, dim, generator=g), dim=1)
    gf = F.normalize(centres[gp] + 0.8 * torch.randn(num_g, dim, generator=g), dim=1)
    return qf, gf, qp, gp, qc, gc


def quantised_feats(pids, g, dim, ones, swap):
    """``ones`` (a power of 4) ones among ``dim`` dims, the identity's own ones except a fraction
    ``swap``: entries are exact powers of 2 after normalisation, so cosine distances are exact
    multiples of 1 / ones -- many exact ties."""
    f = torch.zeros(len(pids), dim)
    for i, pid in enumerate(pids.tolist()):
        perm = torch.randperm(dim, generator=torch.Generator().manual_seed(pid))
        own, rest = perm[:ones], perm[ones:]
        swapped = int((torch.rand(ones, generator=g) < swap).sum())
        f[i, own[torch.randperm(ones, generator=g)[:ones - swapped]]] = 1.0
        f[i, rest[torch.randperm(dim - ones, generator=g)[:swapped]]] = 1.0
    return f


def assert_same(result, cmc, m_ap, m_inp):
    assert np.abs(result.cmc - cmc).max() <= TOL
    assert abs(result.mAP - m_ap) <= TOL and abs(result.mINP - m_inp) <= TOL


# ---- evaluate_rank against fastreid ------------------------------------------------------------

@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", range(4))
def test_equals_fastreid_on_random_cases(seed, metric):
    qf, gf, qp, gp, qc, gc = random_case(seed)
    result = evaluate_rank(qf, gf, qp, gp, qc, gc, metric=metric, block_size=7)
    cmc, m_ap, m_inp, all_ap = fastreid_metrics(qf, gf, qp, gp, qc, gc, metric)
    assert_same(result, cmc, m_ap, m_inp)
    np.testing.assert_allclose(result.all_AP[result.valid], all_ap, atol=1e-12)
    # The case exercises what it is meant to: queries without a match, distractors, removals.
    assert 0 < (~result.valid).sum() < len(qp)
    assert (gp == 0).any()
    assert ((qp[:, None] == gp[None]) & (qc[:, None] == gc[None])).any()


def quantised_case(dim, ones, swap, seed=0):
    qf, gf, qp, gp, qc, gc = random_case(seed, num_q=60, num_g=400, num_ids=20, quantised=(dim, ones, swap))
    dist = build_dist(qf, gf, "cosine")
    assert np.all(dist * ones == np.round(dist * ones)), "distances must be exact for the tie tests"
    return qf, gf, qp, gp, qc, gc, dist


def cross_status_ties(dist, qp, gp, qc, gc):
    """Per query: does a kept match have the same distance as a non-match?"""
    qp, gp, qc, gc = (np.asarray(x) for x in (qp, gp, qc, gc))
    same = gp[None] == qp[:, None]
    kept_match = same & (gc[None] != qc[:, None])
    out = []
    for i in range(len(qp)):
        out.append(bool(np.intersect1d(dist[i, kept_match[i]], dist[i, ~same[i]]).size))
    return np.array(out)


def test_ties_equal_fastreid_where_its_order_is_defined():
    # Matches mostly nearer than non-matches: most queries have ties only within each group.
    qf, gf, qp, gp, qc, gc, dist = quantised_case(256, 64, 0.3)
    crossed = cross_status_ties(dist, qp, gp, qc, gc)
    has_match = ((qp[:, None] == gp) & (qc[:, None] != gc)).any(1).numpy()
    defined = np.flatnonzero(~crossed)
    assert (has_match[defined].sum() > 30) and crossed.any()
    # Matches tie with matches in the defined queries.
    same = (gp[None] == qp[defined, None]).numpy()
    assert sum(len(np.unique(r[m])) < m.sum() for r, m in zip(dist[defined], same)) > 20
    sub = torch.as_tensor(defined)
    result = evaluate_rank(qf[sub], gf, qp[sub], gp, qc[sub], gc, block_size=5)
    assert_same(result, *fastreid_metrics(qf[sub], gf, qp[sub], gp, qc[sub], gc)[:3])


def test_ties_follow_the_stable_rule(monkeypatch):
    # Coarse distances (17 values): matches tie with non-matches in every valid query.
    qf, gf, qp, gp, qc, gc, dist = quantised_case(64, 16, 0.4, seed=1)
    assert cross_status_ties(dist, qp, gp, qc, gc).sum() > 40
    result = evaluate_rank(qf, gf, qp, gp, qc, gc, block_size=9)
    cmc, all_ap, all_inp = naive_metrics(dist, *(np.asarray(x) for x in (qp, gp, qc, gc)))
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-12)
    np.testing.assert_allclose(result.all_AP, all_ap, atol=1e-12)
    np.testing.assert_allclose(result.all_INP, all_inp, atol=1e-12)
    monkeypatch.setattr(fastreid_rank, "np", _StableArgsortNumpy())
    assert_same(result, *fastreid_metrics(qf, gf, qp, gp, qc, gc)[:3])
    # The rule matters here: reversing the gallery (ties broken the other way) changes APs.
    rev = torch.arange(len(gp) - 1, -1, -1)
    reversed_result = evaluate_rank(qf, gf[rev], qp, gp[rev], qc, gc[rev])
    assert np.nanmax(np.abs(reversed_result.all_AP - result.all_AP)) > 0.05


def test_negative_zero_ties_with_zero():
    # Euclidean distances of identical features can round to -0.0 or tiny negatives; -0.0 and
    # 0.0 tie (np.argsort's view), so the earlier gallery index ranks first.
    from dcmip.evaluation.rank import _sortable
    d = torch.tensor([-1.5, -0.0, 0.0, 1e-30, -1e-30, 2.0, float("inf")])
    keys = _sortable(d)
    assert keys[1] == keys[2]
    order = np.argsort(keys.numpy(), kind="stable")
    np.testing.assert_array_equal(order, np.argsort(d.numpy(), kind="stable"))


def test_market_rule_removes_same_id_same_camera_images():
    # Query id 1 in camera 0. Gallery: id 1 in camera 0 (nearest, removed), a distractor, id 1 in
    # camera 1. With the rule the match is at rank 2; without it (cameras all distinct) rank 1.
    qf = torch.tensor([[1.0, 0.0]])
    gf = F.normalize(torch.tensor([[1.0, 0.05], [1.0, 0.1], [1.0, 0.2], [0.0, 1.0]]), dim=1)
    qp, gp = torch.tensor([1]), torch.tensor([1, 0, 1, 2])
    qc, gc = torch.tensor([0]), torch.tensor([0, 1, 1, 1])
    # max_rank 2: fastreid's CMC has as many entries as kept gallery images (3 here).
    result = evaluate_rank(qf, gf, qp, gp, qc, gc, max_rank=2)
    assert result.mAP == pytest.approx(0.5) and list(result.cmc) == [0, 1]
    assert_same(result, *fastreid_metrics(qf, gf, qp, gp, qc, gc, max_rank=2)[:3])
    ignored = evaluate_rank(qf, gf, qp, gp, qc, torch.tensor([1, 1, 1, 1]))
    assert ignored.mAP == pytest.approx((1 + 2 / 3) / 2) and ignored.cmc[0] == 1


def test_block_sizes_give_identical_results():
    qf, gf, qp, gp, qc, gc = random_case(7, num_q=50)
    results = [evaluate_rank(qf, gf, qp, gp, qc, gc, block_size=b) for b in (1, 3, 16, 50, None)]
    for other in results[1:]:
        np.testing.assert_array_equal(other.cmc, results[0].cmc)
        np.testing.assert_array_equal(other.all_AP, results[0].all_AP)
        np.testing.assert_array_equal(other.all_INP, results[0].all_INP)


def test_short_gallery_and_bad_input():
    qf, gf, qp, gp, qc, gc = random_case(3, num_q=6, num_g=20, num_ids=4)
    result = evaluate_rank(qf, gf, qp, gp, qc, gc, max_rank=50)
    assert result.cmc.shape == (20,) and result.cmc[-1] == 1.0
    with pytest.raises(ValueError, match="No query has a match"):
        evaluate_rank(qf, gf, qp + 100, gp, qc, gc)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_rank(qf * float("nan"), gf, qp, gp, qc, gc)
    with pytest.raises(ValueError, match="gallery_pids"):
        evaluate_rank(qf, gf, qp, gp[:-1], qc, gc)
    with pytest.raises(ValueError, match="metric"):
        evaluate_rank(qf, gf, qp, gp, qc, gc, metric="jaccard")


# ---- the evaluator ------------------------------------------------------------------------------

@pytest.fixture
def demo(workspace, monkeypatch):  # noqa: F811
    """The tiny demo dataset of the e2e tests as fastreid's dataset root (a fresh clone has no
    datasets/demo-market), and the ImageNet MobileNetV2 weights prepared for it."""
    import fastreid.data.build as data_build

    root, weights = workspace
    monkeypatch.setattr(data_build, "_root", str(root / "datasets"))
    return weights


def demo_cfg(*opts, weights=None):
    """The demo CPU config for evaluation; without ``weights`` the backbone starts at random
    (nothing is read from weights/, which a fresh clone does not have)."""
    backbone = ("MODEL.BACKBONE.PRETRAIN_PATH", weights) if weights else ("MODEL.BACKBONE.PRETRAIN", "False")
    cfg = load_cfg(Namespace(config_file=os.path.join(ROOT, "configs", "O2CAP", "demo_cpu.yml"),
                             opts=[*backbone, *opts], eval_only=True))
    return cfg


@pytest.mark.parametrize("key", ["TEST.AQE.ENABLED", "TEST.RERANK.ENABLED", "TEST.ROC.ENABLED"])
def test_unsupported_options_are_refused(key):
    cfg = add_dcmip_config(get_cfg())
    cfg.merge_from_list([key, True])
    with pytest.raises(UserInputError, match=key.replace(".", r"\.")):
        check_evaluator_config(cfg)
    cfg.merge_from_list(["UNSUP.EVALUATOR", "fastreid"])
    check_evaluator_config(cfg)  # fastreid's evaluator has them
    with pytest.raises(UserInputError, match="UNSUP.EVALUATOR"):
        check_evaluator_config(demo_cfg("UNSUP.EVALUATOR", "exact"))
    with pytest.raises(UserInputError, match="TEST.METRIC"):
        check_evaluator_config(demo_cfg("TEST.METRIC", "jaccard"))


def test_trainer_builds_the_blocked_evaluator_unless_told_otherwise(demo):
    _, evaluator = UnsupervisedTrainer.build_evaluator(demo_cfg(), "DemoMarket")
    assert isinstance(evaluator, BlockedReidEvaluator)
    _, evaluator = UnsupervisedTrainer.build_evaluator(demo_cfg("UNSUP.EVALUATOR", "fastreid"), "DemoMarket")
    assert type(evaluator) is ReidEvaluator


def fastreid_results(cfg, num_query, predictions):
    theirs = ReidEvaluator(cfg, num_query)
    theirs._predictions = predictions
    return theirs.evaluate()


def assert_same_results(ours, theirs):
    assert list(ours) == list(theirs)
    for key in theirs:
        assert abs(ours[key] - float(theirs[key])) <= 100 * TOL, key


def test_demo_evaluation_equals_fastreids(demo, monkeypatch):
    """DefaultTrainer.test (what training and --eval-only run) on the demo data with the
    ImageNet MobileNetV2: our results equal fastreid's ReidEvaluator's on the same features."""
    cfg = demo_cfg("INPUT.SIZE_TEST", "[64, 32]", weights=demo)  # a quarter of the pixels: a faster test
    built = []
    build = UnsupervisedTrainer.build_evaluator.__func__

    def capture(cls, *args, **kwargs):
        built.append(build(cls, *args, **kwargs))
        return built[-1]

    monkeypatch.setattr(UnsupervisedTrainer, "build_evaluator", classmethod(capture))
    model = UnsupervisedTrainer.build_model(cfg).eval()
    ours = UnsupervisedTrainer.test(cfg, model)
    (_, evaluator), = built
    assert isinstance(evaluator, BlockedReidEvaluator)
    assert_same_results(ours, fastreid_results(cfg, evaluator._num_query, evaluator._predictions))


def test_gathers_to_the_main_process(monkeypatch):
    """Under DDP each rank processes its shard (fastreid's InferenceSampler: contiguous ranges);
    rank 0 gathers and evaluates them all, the other ranks return {}, as in fastreid."""
    cfg = demo_cfg()
    qf, gf, qp, gp, qc, gc = random_case(5)
    batches = [{"feats": f, "pids": p, "camids": c}
               for f, p, c in zip(torch.cat([qf, gf]).split(64), torch.cat([qp, gp]).split(64),
                                  torch.cat([qc, gc]).split(64))]
    rank0, rank1 = batches[:3], batches[3:]
    evaluator = BlockedReidEvaluator(cfg, num_query=len(qp))
    evaluator._predictions = rank0
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    monkeypatch.setattr(comm, "synchronize", lambda: None)
    monkeypatch.setattr(comm, "gather", lambda data, dst=0: [data, rank1])
    monkeypatch.setattr(comm, "is_main_process", lambda: False)
    assert evaluator.evaluate() == {}
    monkeypatch.setattr(comm, "is_main_process", lambda: True)
    ours = evaluator.evaluate()
    monkeypatch.setattr(comm, "get_world_size", lambda: 1)
    assert_same_results(ours, fastreid_results(cfg, len(qp), batches))
    assert ours["mAP"] == pytest.approx(100 * evaluate_rank(qf, gf, qp, gp, qc, gc).mAP)


def test_real_market_split_ids_and_cameras():
    """The real Market split's query / gallery ids and cameras (distractors, same-camera
    images), with identity-structured random features: equal to fastreid."""
    if not MarketSplit._shared_dir.is_dir():
        pytest.skip(f"real Market-1501 training images not found at {MarketSplit._shared_dir}")
    ds = MarketSplit(root="unused")
    qp, qc = (torch.tensor([item[k] for item in ds.query]) for k in (1, 2))
    gp, gc = (torch.tensor([item[k] for item in ds.gallery]) for k in (1, 2))
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(int(max(qp.max(), gp.max())) + 1, 64, generator=g)
    noise = 1.2
    qf = F.normalize(centres[qp] + noise * torch.randn(len(qp), 64, generator=g), dim=1)
    gf = F.normalize(centres[gp] + noise * torch.randn(len(gp), 64, generator=g), dim=1)
    keep = torch.arange(0, len(qp), 3)  # a third of the queries keeps fastreid's loop short
    result = evaluate_rank(qf[keep], gf, qp[keep], gp, qc[keep], gc)
    assert_same(result, *fastreid_metrics(qf[keep], gf, qp[keep], gp, qc[keep], gc)[:3])
    assert 0.05 < result.mAP < 0.95  # neither trivial nor hopeless
    assert ((qp[keep, None] == gp) & (qc[keep, None] == gc)).any()


def test_cosine_candidates_include_similarities_that_round_to_the_threshold(monkeypatch):
    # Candidates are picked on the similarity s; fl(1 - s) can tie the farthest match's distance
    # for an s just below the match's. Find such a non-match a (s_a < s_b, fl(1 - s_a) ==
    # fl(1 - s_b)) and put it before the match b in the gallery: the stable rule ranks it first.
    import dcmip.evaluation.rank as rank_module
    angles = 1.2661 + torch.arange(4000, dtype=torch.float64) * 1e-9
    g = F.normalize(torch.stack([torch.cos(angles), torch.sin(angles)], 1).float(), dim=1)
    s = g[:, 0]  # similarity to the query e1, as the evaluator computes it
    d = s.neg().add(1)
    pair = next((i, j) for i in range(len(s)) for j in range(i + 1, min(i + 40, len(s)))
                if s[j] < s[i] and d[j] == d[i])
    b, a = pair  # s_a < s_b, equal rounded distances
    qf = torch.tensor([[1.0, 0.0]])
    gf = torch.stack([g[a], g[b], torch.tensor([0.0, 1.0])])
    qp, gp, qc, gc = torch.tensor([1]), torch.tensor([2, 1, 3]), torch.tensor([0]), torch.tensor([1, 1, 1])
    result = evaluate_rank(qf, gf, qp, gp, qc, gc, max_rank=3)
    assert result.mAP == 0.5 and list(result.cmc) == [0, 1, 1]
    assert_same(result, *fastreid_metrics(qf, gf, qp, gp, qc, gc, max_rank=3)[:3])
    monkeypatch.setattr(rank_module, "_COSINE_MARGIN", 0.0)  # the margin is what makes it right
    assert evaluate_rank(qf, gf, qp, gp, qc, gc, max_rank=3).mAP == 1.0


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_major_blocks_give_fastreids_distances(metric):
    # Gallery-major products (gallery @ query_block.T) are what make the CPU evaluation fast; they
    # give fastreid's query @ gallery.T up to float32 rounding (bit for bit with MKL on an AMD
    # EPYC for blocks of ~100 queries or more, which a test cannot promise for every BLAS).
    from dcmip.evaluation.rank import _Distance
    qf, gf = torch.randn(256, 512), torch.randn(3000, 512)
    distance = _Distance(qf, gf, metric)
    ours = distance.distance(distance.block(0, 256)).t().numpy()
    expected = build_dist(qf, gf, metric)
    np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-6 * np.abs(expected).max())


def test_candidates_counted_in_chunks_give_identical_results(monkeypatch):
    import dcmip.evaluation.rank as rank_module
    qf, gf, qp, gp, qc, gc = random_case(3, num_q=50)
    whole = evaluate_rank(qf, gf, qp, gp, qc, gc)
    monkeypatch.setattr(rank_module, "_CANDIDATE_CHUNK", 7)
    chunked = evaluate_rank(qf, gf, qp, gp, qc, gc)
    np.testing.assert_array_equal(chunked.cmc, whole.cmc)
    np.testing.assert_array_equal(chunked.all_AP, whole.all_AP)
    np.testing.assert_array_equal(chunked.all_INP, whole.all_INP)
