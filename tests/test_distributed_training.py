"""Two gloo processes (METHODS §5): after every step both ranks hold identical parameters and
memories, and the memory update is the single-process update of the global batch in order
(for DCMIP stage 2, the random instance replacement included: every rank draws the same)."""
import os

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from dcmip.data.pseudo_dataset import group_batch
from dcmip.structures import PseudoLabels
from gloo import free_port, gloo_group

WORLD = 2
STEPS = 3
GLOBAL_BATCH = 8


def _cfg(memory_name, *extra):
    import dcmip  # noqa: F401
    from dcmip.config import add_dcmip_config
    from fastreid.config import get_cfg

    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.merge_from_list(["MODEL.META_ARCHITECTURE", "UnsupervisedReID", "MODEL.DEVICE", "cpu",
                         "MODEL.BACKBONE.NAME", "build_mobilenetv2_backbone", "MODEL.BACKBONE.DEPTH", "0.35x",
                         "MODEL.BACKBONE.FEAT_DIM", "1280", "MODEL.BACKBONE.PRETRAIN", "False",
                         "MODEL.HEADS.NAME", "UnsupEmbeddingHead", "MODEL.HEADS.WITH_BNNECK", "True",
                         "MODEL.HEADS.NECK_FEAT", "after", "UNSUP.MEMORY.NAME", memory_name,
                         # SGD: Adam's first steps are ~lr * sign(gradient), which turns the
                         # float summation order of near-zero gradients into lr-sized differences.
                         "SOLVER.OPT", "SGD", "SOLVER.BASE_LR", "1e-4", "SOLVER.MOMENTUM", "0.9", *extra])
    return cfg


def _pseudo_and_batches(memory_name):
    """The epoch's pseudo labels and STEPS global batches; every rank draws the same global
    batch and keeps its contiguous slice (dcmip.sampling)."""
    g = torch.Generator().manual_seed(1)
    n, d = 24, 1280
    clusters = torch.arange(n) % 4
    cams = (torch.arange(n) // 4) % 3
    proxies = clusters * 3 + cams
    _, proxies = torch.unique(proxies, return_inverse=True)
    # DCMIP: teacher features make the head build its multi-instance memory (stage 2).
    teacher = F.normalize(torch.randn(n, d, generator=g), dim=1) if memory_name == "DiscrepantProxyMemory" else None
    pseudo = PseudoLabels(features=F.normalize(torch.randn(n, d, generator=g), dim=1), clusters=clusters,
                          cams=cams, proxies=proxies, indices=torch.arange(n), teacher_features=teacher)
    batches = []
    for _ in range(STEPS):
        rows = torch.randint(0, n, (GLOBAL_BATCH,), generator=g)
        images = torch.rand(GLOBAL_BATCH, 3, 64, 32, generator=g) * 255
        batches.append((rows, {"images": images, "clusters": clusters[rows], "proxies": proxies[rows],
                               "camids": cams[rows], "index": rows,
                               "multiplicity": {"clusters": GLOBAL_BATCH, "proxies": GLOBAL_BATCH}}))
    return pseudo, batches


def _single_process_params(memory_name):
    """Parameters after every step of one process training on the global batches, with
    BatchNorm statistics per rank-sized group."""
    cfg = _cfg(memory_name, "UNSUP.BN_GROUP_SIZE", str(GLOBAL_BATCH // WORLD))
    # One thread, as in the workers: this random-init model on 4-image BatchNorm groups turns
    # the convolutions' summation order (it depends on the thread count) into 1e-4 differences.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_single_process(cfg, memory_name)
    finally:
        torch.set_num_threads(threads)


def _train_single_process(cfg, memory_name):
    from dcmip.engine.trainer import UnsupervisedTrainer

    torch.manual_seed(0)
    model = UnsupervisedTrainer.build_model(cfg)
    optimizer, _ = UnsupervisedTrainer.build_optimizer(cfg, model)
    pseudo, batches = _pseudo_and_batches(memory_name)
    model.memory.reset(pseudo)
    params = []
    for _, batch in batches[:1]:
        losses = model({**batch, "groups": group_batch(batch)})
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        model.update_memory()
        params.append([p.detach().clone() for p in model.parameters()])
    return params


def _worker(rank, port, memory_name, out_dir):
    import torch.distributed as dist

    torch.set_num_threads(1)
    with gloo_group(rank, WORLD, port):
        from fastreid.utils import comm
        from torch.nn.parallel import DistributedDataParallel

        from dcmip.engine.trainer import UnsupervisedTrainer

        comm._LOCAL_PROCESS_GROUP = dist.new_group([0, 1])
        cfg = _cfg(memory_name)
        torch.manual_seed(0)  # same initial parameters on every rank
        model = UnsupervisedTrainer.build_model(cfg)
        optimizer, _ = UnsupervisedTrainer.build_optimizer(cfg, model)
        pseudo, batches = _pseudo_and_batches(memory_name)
        model.memory.reset(pseudo)
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        local = GLOBAL_BATCH // WORLD
        history = []
        for rows, batch in batches:
            sl = slice(rank * local, (rank + 1) * local)
            local_batch = {k: v[sl] if torch.is_tensor(v) else v for k, v in batch.items()}
            # The collation's host-side grouping of this rank's slice; the memory update
            # regroups the gathered global batch from every rank's labels.
            local_batch["groups"] = group_batch(local_batch)
            losses = ddp(local_batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            memory_before = {k: v.clone() for k, v in model.memory.named_buffers()}
            local_features = model._pending[0].clone()
            model.update_memory()
            history.append({"memory_before": memory_before, "features": local_features, "rows": rows,
                            "memory": {k: v.clone() for k, v in model.memory.named_buffers()},
                            "params": [p.detach().clone() for p in model.parameters()]})
        torch.save({"history": history, "pseudo": pseudo}, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.parametrize("memory_name", ["ClusterMemory", "CameraAwareProxyMemory", "DiscrepantProxyMemory"])
def test_ranks_stay_identical_and_match_single_process_updates(tmp_path, memory_name):
    mp.spawn(_worker, args=(free_port(), memory_name, str(tmp_path)), nprocs=WORLD, join=True)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    ranks = [s["history"] for s in saved]
    for step in range(STEPS):
        a, b = ranks[0][step], ranks[1][step]
        for pa, pb in zip(a["params"], b["params"]):
            torch.testing.assert_close(pa, pb, atol=0, rtol=0)
        for name in a["memory"]:
            if name.startswith("statistic"):  # per-rank association statistics, not memory
                continue
            torch.testing.assert_close(a["memory"][name], b["memory"][name], atol=0, rtol=0)

    # The same step as one process on the global batch: DDP's averaged gradient is the whole
    # batch's (O2CAP's per-camera mean uses the global camera counts). The first step only:
    # with this random-init model (gradients ~100) the two summation orders' 1e-8 differences
    # flip later hard-negative choices, and the runs drift apart (~5e-4 at step 2).
    for p_ddp, p_one in zip(ranks[0][0]["params"], _single_process_params(memory_name)[0]):
        torch.testing.assert_close(p_ddp, p_one, atol=1e-6, rtol=1e-5)

    # The update of the cluster memory equals the single-process sequential update of the
    # global batch (rank 0's slice, then rank 1's).
    if memory_name == "ClusterMemory":
        from dcmip.memory.updates import sequential_momentum_update_

        clusters = torch.arange(24) % 4
        for step in range(STEPS):
            features = torch.cat([ranks[r][step]["features"] for r in range(WORLD)])
            expected = ranks[0][step]["memory_before"]["memory"].clone()
            sequential_momentum_update_(expected, features, clusters[ranks[0][step]["rows"]], 0.1)
            torch.testing.assert_close(ranks[0][step]["memory"]["memory"], expected)

    # DCMIP's instance replacement: the draws of one process replaying the global batches with
    # the head's seed (reset's initial draw first, then one replacement per step).
    if memory_name == "DiscrepantProxyMemory":
        from dcmip.memory.dcmip.functional import init_instance_memory, replace_instances_

        pseudo, clusters = saved[0]["pseudo"], torch.arange(24) % 4
        generator = torch.Generator().manual_seed(0 * 1_000_003 + pseudo.epoch)  # UNSUP.SEED 0
        instances = init_instance_memory(pseudo.teacher_features, clusters, 4, 16, generator)
        expected = torch.cat([instances, instances.new_zeros(1, instances.shape[1])])
        torch.testing.assert_close(ranks[0][0]["memory_before"]["instance_buffer"][:-1], instances, atol=0, rtol=0)
        for step in range(STEPS):
            features = torch.cat([ranks[r][step]["features"] for r in range(WORLD)])
            replace_instances_(expected, features, clusters[ranks[0][step]["rows"]], 4, generator)
            for r in range(WORLD):
                got = ranks[r][step]["memory"]["instance_buffer"][:-1]
                torch.testing.assert_close(got, expected[:-1], atol=0, rtol=0)
            assert not torch.equal(ranks[0][step]["memory"]["instance_buffer"][:-1],
                                   ranks[0][step]["memory_before"]["instance_buffer"][:-1])
