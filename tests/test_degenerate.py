"""Degenerate clustering (issue 7): one cluster, one camera, clusters smaller than K,
singletons. Every memory head x sampler trains one step to finite losses and finite,
L2-normalised memories; the clustering hook names the epoch when nothing is trainable."""
import pytest
import torch

from fastreid.config import get_cfg

from dcmip.clustering import camera_aware_proxies
from dcmip.config import add_dcmip_config
from dcmip.engine.hooks import ClusteringError, ClusteringHook
from dcmip.memory import build_memory_head
from dcmip.sampling import build_sampler
from dcmip.structures import PseudoLabels

HEADS = {
    "cluster": ("ClusterMemory", {}),
    "o2cap": ("CameraAwareProxyMemory", {"LOSSES": ("offline", "online")}),
    "o2cap_intra": ("CameraAwareProxyMemory", {"LOSSES": ("intra", "offline")}),
    "dcmip1": ("DiscrepantProxyMemory", {}),
    "dcmip2": ("DiscrepantProxyMemory", {}),
}
SAMPLERS = ("ClusterBalancedSampler", "ProxyBalancedSampler", "CameraDiverseSampler")


def _cases():
    # name -> (clusters, cams)
    n = 12
    return {
        "single_cluster": (torch.zeros(n, dtype=torch.long), torch.arange(n) % 3),
        "single_cluster_one_camera": (torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)),
        "one_camera": (torch.arange(n) // 4, torch.zeros(n, dtype=torch.long)),
        "pairs_below_k": (torch.arange(n) // 2, torch.arange(n) % 2),
        "singletons": (torch.arange(n), torch.arange(n) % 3),
        "singletons_one_camera": (torch.arange(n), torch.zeros(n, dtype=torch.long)),
    }


def _pseudo(clusters, cams, stage2):
    g = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(len(clusters), 16, generator=g), dim=1)
    teacher = torch.nn.functional.normalize(torch.randn(len(clusters), 16, generator=g), dim=1) if stage2 else None
    return PseudoLabels(features=feats, clusters=clusters, cams=cams,
                        proxies=torch.as_tensor(camera_aware_proxies(clusters.numpy(), cams.numpy())).long(),
                        indices=torch.arange(len(clusters)), teacher_features=teacher, epoch=3)


def _cfg(head, sampler):
    cfg = get_cfg()
    add_dcmip_config(cfg)
    name, o2cap = HEADS[head]
    cfg.UNSUP.MEMORY.NAME = name
    for key, value in o2cap.items():
        setattr(cfg.UNSUP.O2CAP, key, value)
    cfg.UNSUP.SAMPLER.NAME = sampler
    cfg.UNSUP.SAMPLER.NUM_INSTANCES = 4
    cfg.SOLVER.IMS_PER_BATCH = 16
    return cfg


def _memories(head):
    return [getattr(head, n) for n in ("memory", "proxy_memory", "cluster_memory", "proxies")
            if isinstance(getattr(head, n, None), torch.Tensor) and getattr(head, n).numel()] + (
        [head.instances] if getattr(head, "stage2", False) else [])


@pytest.mark.parametrize("case", list(_cases()))
@pytest.mark.parametrize("sampler_name", SAMPLERS)
@pytest.mark.parametrize("head_name", list(HEADS))
def test_degenerate_step(head_name, sampler_name, case):
    clusters, cams = _cases()[case]
    pseudo = _pseudo(clusters, cams, stage2=head_name == "dcmip2")
    cfg = _cfg(head_name, sampler_name)
    sampler = build_sampler(cfg, pseudo, seed=0)
    rows = torch.tensor(next(iter(sampler.global_batches())))
    assert len(rows) == 16
    head = build_memory_head(cfg)
    head.reset(pseudo)
    batch = {"clusters": pseudo.clusters[rows], "proxies": pseudo.proxies[rows], "camids": pseudo.cams[rows],
             "index": rows}
    x = torch.nn.functional.normalize(torch.randn(len(rows), 16, generator=torch.Generator().manual_seed(1)),
                                      dim=1).requires_grad_()
    losses = head(x, batch)
    total = sum(losses.values())
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    total.backward()
    assert torch.isfinite(x.grad).all()
    head.update(x.detach(), batch)
    for memory in _memories(head):
        assert torch.isfinite(memory).all()
        torch.testing.assert_close(memory.norm(dim=1), torch.ones(len(memory)), atol=1e-4, rtol=0)


def _hook():
    hook = ClusteringHook.__new__(ClusteringHook)
    cfg = get_cfg()
    add_dcmip_config(cfg)
    hook.cfg = cfg
    hook.cams = torch.arange(10) % 2
    hook.true_ids = None
    return hook


def test_hook_all_outliers_names_epoch():
    with pytest.raises(ClusteringError, match="epoch 3: .*all 10 train images as outliers"):
        _hook()._pseudo_labels(3, torch.full((10,), -1), torch.randn(10, 16), None)


def test_hook_keeps_outliers_out():
    labels = torch.tensor([0, 0, -1, 1, 1, -1, 2, 2, 2, -1])
    pseudo = _hook()._pseudo_labels(5, labels, torch.randn(10, 16), None)
    assert pseudo.epoch == 5 and pseudo.num_clusters == 3 and len(pseudo.indices) == 7


def test_hook_single_cluster_names_epoch():
    labels = torch.tensor([0, 0, -1, 0, 0, 0, 0, 0, 0, -1])
    with pytest.raises(ClusteringError, match="epoch 4: a single cluster holds all 8 kept"):
        _hook()._pseudo_labels(4, labels, torch.randn(10, 16), None)


def _nan_features(n=10, rows=(2, 7), inf_row=5):
    feats = torch.randn(n, 16)
    feats[list(rows)] = float("nan")
    feats[inf_row, 0] = float("inf")
    return feats


@pytest.mark.parametrize("network", ["model", "EMA teacher"])
def test_hook_nan_or_inf_features_name_epoch_and_network(monkeypatch, network):
    """Stops before clustering: NaN features would be clustered and copied into the memory."""
    import types
    import dcmip.engine.hooks as hooks_module

    hook = _hook()
    hook.items = [(f"{i}.jpg", i, i % 2) for i in range(10)]
    hook.image_cache = None
    student = torch.nn.Identity()
    teacher = torch.nn.Identity() if network == "EMA teacher" else None
    clustered = []
    monkeypatch.setattr(hooks_module, "extract_many",
                        lambda cfg, models, items, cache: {desc: _nan_features() if model is (teacher or student)
                                                           else torch.randn(10, 16) for desc, model in models.items()})
    monkeypatch.setattr(hooks_module, "cluster_features_distributed", lambda *a, **k: clustered.append(1))
    hook.trainer = types.SimpleNamespace(epoch=7, unwrapped_model=student, teacher_for_epoch=lambda: teacher)
    with pytest.raises(ClusteringError, match=rf"epoch 7: the {network} produced NaN or infinite features "
                                              r"for 3 of 10 train images.*SOLVER.BASE_LR"):
        hook.before_epoch()
    assert not clustered


def test_nan_loss_stops_naming_epoch_and_iteration():
    from dcmip.engine.trainer import DivergedError, StepRunner
    from dcmip.registry import TrainingStopped

    class Diverged(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, data):
            return {"loss_cluster": (self.w * float("nan")).sum()}

        def update_memory(self):
            pass

    model = Diverged()
    runner = StepRunner(model, torch.optim.SGD(model.parameters(), lr=0.1), amp=False, iters_per_epoch=100)
    runner.set_data_loader([{}] * 3)
    runner.iter = 250
    with pytest.raises(DivergedError, match=r"epoch 2, iteration 250: the loss became nan") as e:
        runner.run_step()
    assert isinstance(e.value, TrainingStopped)
