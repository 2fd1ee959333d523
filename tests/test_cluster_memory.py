"""The Cluster Contrast head (METHODS §3) against a per-image implementation of the spec."""
import math

import pytest
import torch
import torch.nn.functional as F

import dcmip  # noqa: F401
from dcmip.config import add_dcmip_config
from dcmip.memory import build_memory_head
from dcmip.memory.cluster_contrast.functional import cluster_contrast_loss
from dcmip.structures import PseudoLabels
from fastreid.config import get_cfg


def naive_loss(features, memory, labels, temp):
    total = 0.0
    for f, y in zip(features, labels.tolist()):
        logits = [float(f @ m) / temp for m in memory]
        total += -logits[y] + math.log(sum(math.exp(v) for v in logits))
    return total / len(labels)


def test_loss_known_case():
    """Orthogonal memory, image equal to its own entry: CE = log(1 + (C-1) e^{-1/τ})."""
    memory = torch.eye(3)
    loss = cluster_contrast_loss(torch.eye(3)[:1], memory, torch.tensor([0]), 0.5)
    assert loss.item() == pytest.approx(math.log(1 + 2 * math.exp(-2)))


def test_loss_and_gradient_match_the_per_image_version():
    g = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=1)
    features = F.normalize(torch.randn(10, 8, generator=g, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.randint(0, 6, (10,), generator=g)
    loss = cluster_contrast_loss(features, memory, labels, 0.05)
    assert loss.item() == pytest.approx(naive_loss(features.detach(), memory, labels, 0.05), abs=1e-9)
    loss.backward()
    # d/df of CE(f·Mᵀ/τ): (softmax - onehot) M / τ / B
    p = torch.softmax(features.detach() @ memory.t() / 0.05, dim=1)
    p[torch.arange(10), labels] -= 1
    torch.testing.assert_close(features.grad, p @ memory / 0.05 / 10)


@pytest.mark.parametrize("rule", ["sequential", "hardest"])
def test_head_reset_forward_update(rule):
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.UNSUP.MEMORY.UPDATE = rule
    head = build_memory_head(cfg)
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(12, 4, generator=g), dim=1)
    clusters = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    pseudo = PseudoLabels(features=feats, clusters=clusters, cams=torch.zeros(12, dtype=torch.long),
                          proxies=clusters, indices=torch.arange(12))
    head.reset(pseudo)
    centroids = torch.stack([F.normalize(feats[clusters == c].mean(0), dim=0) for c in range(4)])
    torch.testing.assert_close(head.memory, centroids)

    batch_feats = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    batch = {"clusters": torch.tensor([1, 0, 1, 3, 1, 0])}
    losses = head(batch_feats, batch)
    assert losses["loss_cluster"].item() == pytest.approx(
        naive_loss(batch_feats, centroids, batch["clusters"], 0.05), rel=1e-5)
    head.update(batch_feats, batch)
    expected = centroids.clone()
    if rule == "sequential":
        for f, y in zip(batch_feats, batch["clusters"].tolist()):
            expected[y] = F.normalize(0.1 * expected[y] + 0.9 * f, dim=0)
    else:
        for y in {0, 1, 3}:
            rows = [i for i, l in enumerate(batch["clusters"].tolist()) if l == y]
            hard = min(rows, key=lambda i: float(batch_feats[i] @ centroids[y]))
            expected[y] = F.normalize(0.1 * centroids[y] + 0.9 * batch_feats[hard], dim=0)
    torch.testing.assert_close(head.memory, expected)


def test_bad_update_rule_is_named():
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.UNSUP.MEMORY.UPDATE = "fancy"
    with pytest.raises(ValueError, match="UNSUP.MEMORY.UPDATE"):
        build_memory_head(cfg)
