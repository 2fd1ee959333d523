"""Samplers (issue 12 items 8 and 9) against naive transcriptions of the authors' samplers.

The references below follow the authors' code line by line (Python lists, ``No_index``,
``DataLoader(drop_last=True)`` re-iterated pass after pass) and draw from the same numpy
generator in the same order as ours, so the two streams must be identical; the structural
tests check the rules without relying on that order.
"""
from collections import Counter

import numpy as np
import pytest
import torch

from dcmip.sampling import SAMPLER_REGISTRY
from dcmip.structures import PseudoLabels


def pseudo_labels(clusters, cams, proxies=None):
    clusters, cams = torch.tensor(clusters), torch.tensor(cams)
    n = len(clusters)
    return PseudoLabels(features=torch.zeros(n, 2), clusters=clusters, cams=cams,
                        proxies=clusters if proxies is None else torch.tensor(proxies), indices=torch.arange(n))


def mixed_pseudo():
    """Cluster 0: 40 images over 4 cameras; 1: 6 over 2 cameras; 2: 5 of one camera; 3: a
    singleton; 4: 20 images, 17 of camera 0 and 3 of camera 1; 5: 16 images, 1 of camera 0
    and 15 of camera 1 (15 < K = 16 candidates: drawn with replacement)."""
    cams = ([c % 4 for c in range(40)] + [0, 1, 0, 1, 0, 1] + [2] * 5 + [3] + [0] * 17 + [1] * 3
            + [0] + [1] * 15)
    clusters = [0] * 40 + [1] * 6 + [2] * 5 + [3] + [4] * 20 + [5] * 16
    return pseudo_labels(clusters, cams)


# ---- naive references ------------------------------------------------------------------------

def no_index(a, b):
    return [i for i, j in enumerate(a) if j != b]


def naive_multi_gallery_pass(clusters, cams, k, rng):
    """alibaba/cluster-contrast-reid RandomMultipleGallerySampler.__iter__, with rng."""
    pid_index, pid_cam = {}, {}
    for index, (pid, cam) in enumerate(zip(clusters, cams)):
        pid_index.setdefault(pid, []).append(index)
        pid_cam.setdefault(pid, []).append(cam)
    pids = sorted(pid_index)
    ret = []
    for kid in rng.permutation(len(pids)):
        index, cam_list = pid_index[pids[kid]], pid_cam[pids[kid]]
        pos = int(rng.integers(len(index)))
        i = index[pos]
        ret.append(i)
        select_cams = no_index(cam_list, cam_list[pos])
        if select_cams:
            chosen = rng.choice(np.array(index)[select_cams], size=k - 1, replace=len(select_cams) < k)
        else:
            select_indexes = no_index(index, i)
            if not select_indexes:
                continue
            chosen = rng.choice(np.array(index)[select_indexes], size=k - 1, replace=len(select_indexes) < k)
        ret.extend(int(c) for c in chosen)
    return ret


def naive_class_uniform_pass(labels, k, rng):
    """O2CAP ClassUniformlySampler._generate_list, with rng."""
    groups = {}
    for index, label in enumerate(labels):
        groups.setdefault(label, []).append(index)
    keys = sorted(groups)
    ret = []
    for g in rng.permutation(len(keys)):
        value = np.array(groups[keys[g]])
        if len(value) >= k:
            ret.extend(rng.choice(value, size=k, replace=False).tolist())
        else:
            ret.extend(rng.permutation(np.tile(value, k))[:k].tolist())
    return ret


def naive_batches(draw_pass, batch_size, count):
    """IterLoader over DataLoader(sampler, batch_size, drop_last=True): each pass cut into
    batches, its leftover dropped (a pass too short for one batch carries over)."""
    out, pending = [], []
    while len(out) < count:
        pending += draw_pass()
        full = len(pending) // batch_size
        out += [pending[b * batch_size:(b + 1) * batch_size] for b in range(full)]
        if full:
            pending = []
    return out[:count]


# ---- RandomMultipleGallerySampler ----------------------------------------------------------

@pytest.mark.parametrize("batch, k", [(32, 16), (16, 4), (24, 4)])
def test_multi_gallery_equals_the_authors_sampler(batch, k):
    p = mixed_pseudo()
    clusters, cams = p.clusters.tolist(), p.cams.tolist()
    ours = SAMPLER_REGISTRY.get("RandomMultipleGallerySampler")(p, batch, k, seed=5).global_batches()
    rng = np.random.default_rng(5)
    expected = naive_batches(lambda: naive_multi_gallery_pass(clusters, cams, k, rng), batch, 60)
    assert [next(ours) for _ in range(60)] == expected


def test_multi_gallery_group_rules():
    """Without the singleton every group is 16 images; each pass (80 images) gives two batches
    of 32 and drops the last group, so consecutive batch pairs hold 4 distinct clusters."""
    p = mixed_pseudo()
    keep = torch.nonzero(p.clusters != 3).squeeze(1)
    clusters = p.clusters[keep].clone()
    clusters[clusters > 3] -= 1
    p = pseudo_labels(clusters.tolist(), p.cams[keep].tolist())
    clusters, cams = p.clusters.numpy(), p.cams.numpy()
    stream = SAMPLER_REGISTRY.get("RandomMultipleGallerySampler")(p, 32, 16, seed=0).global_batches()
    seen = Counter()
    for _ in range(100):
        pass_clusters = []
        for batch in (next(stream), next(stream)):
            for group in np.array(batch).reshape(2, 16):
                y = clusters[group[0]]
                assert (clusters[group] == y).all()
                pass_clusters.append(y)
                anchor_cam, rest = cams[group[0]], group[1:]
                if y == 2:  # one camera: the cluster's other images (4 < 16: with replacement)
                    assert set(rest) <= set(np.flatnonzero(clusters == 2)) - {group[0]}
                else:
                    assert (cams[rest] != anchor_cam).all()
                if y == 0:  # 30 images of other cameras >= 16: without replacement
                    assert len(set(rest)) == 15
                if y == 3 and anchor_cam == 1:  # 17 of camera 0: without replacement
                    assert len(set(rest)) == 15
        assert len(set(pass_clusters)) == 4, "a pass visits each cluster once; its fifth group is dropped"
        seen.update(pass_clusters)
    assert set(seen) == set(range(5)) and min(seen.values()) > 50


def test_singleton_contributes_its_anchor_once():
    # 3 clusters of 4 (2 cameras) and a singleton: a pass is 3 x 4 + 1 = 13 images, one batch of 8.
    clusters = [0] * 4 + [1] * 4 + [2] * 4 + [3]
    cams = [0, 1] * 6 + [0]
    p = pseudo_labels(clusters, cams)
    stream = SAMPLER_REGISTRY.get("RandomMultipleGallerySampler")(p, 8, 4, seed=1).global_batches()
    singleton_batches = 0
    for _ in range(300):
        batch = next(stream)
        count = batch.count(12)
        assert count <= 1
        singleton_batches += count
    # The singleton is one of 4 groups in random order and sits in the first 8 images when at
    # most one 4-image group precedes it: probability 1/2.
    assert 100 < singleton_batches < 200


def test_a_pass_shorter_than_a_batch_carries_over():
    p = pseudo_labels(list(range(12)), [0] * 12)  # 12 singletons: 12 images per pass
    stream = SAMPLER_REGISTRY.get("RandomMultipleGallerySampler")(p, 16, 4, seed=2).global_batches()
    first, second = next(stream), next(stream)
    assert sorted(first[:12]) == list(range(12)) and len(set(first[12:])) == 4
    assert sorted(second[:12]) == list(range(12))  # a new pass after the 8 left over were dropped


def test_camera_diverse_is_the_same_rule():
    p = mixed_pseudo()
    a = SAMPLER_REGISTRY.get("CameraDiverseSampler")(p, 32, 16, seed=3).global_batches()
    b = SAMPLER_REGISTRY.get("RandomMultipleGallerySampler")(p, 32, 16, seed=3).global_batches()
    assert [next(a) for _ in range(10)] == [next(b) for _ in range(10)]


# ---- cluster- and proxy-balanced samplers ------------------------------------------------------

@pytest.mark.parametrize("name, key", [("ClusterBalancedSampler", "clusters"), ("ProxyBalancedSampler", "proxies")])
def test_balanced_equals_the_authors_sampler(name, key):
    p = mixed_pseudo()
    proxies = torch.unique(p.clusters * 10 + p.cams, return_inverse=True)[1]
    p = pseudo_labels(p.clusters.tolist(), p.cams.tolist(), proxies.tolist())
    labels = getattr(p, key).tolist()
    ours = SAMPLER_REGISTRY.get(name)(p, 24, 4, seed=7).global_batches()
    rng = np.random.default_rng(7)
    expected = naive_batches(lambda: naive_class_uniform_pass(labels, 4, rng), 24, 40)
    assert [next(ours) for _ in range(40)] == expected


def test_balanced_pass_drops_its_leftover():
    # 5 groups x 4 = 20 images per pass: two batches of 8, the fifth group dropped.
    labels = np.repeat(np.arange(5), 6).tolist()
    p = pseudo_labels(labels, [0] * 30)
    stream = SAMPLER_REGISTRY.get("ClusterBalancedSampler")(p, 8, 4, seed=0).global_batches()
    for _ in range(50):
        groups = [labels[i] for i in next(stream) + next(stream)]
        assert sorted(Counter(groups).values()) == [4, 4, 4, 4]


# ---- the DDP contract -------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SAMPLER_REGISTRY._obj_map))
def test_rank_slices_concatenate_to_the_single_process_batches(name):
    """METHODS §5: every rank draws the same global batch and keeps its contiguous slice."""
    p, batch, k = mixed_pseudo(), 16, 4
    single = iter(SAMPLER_REGISTRY.get(name)(p, batch, k, seed=3))
    ranks = [iter(SAMPLER_REGISTRY.get(name)(p, batch, k, seed=3, rank=r, world_size=4)) for r in range(4)]
    for _ in range(20):
        expected = [next(single) for _ in range(batch)]
        assert sum(([next(r) for _ in range(batch // 4)] for r in ranks), []) == expected
