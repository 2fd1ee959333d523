"""Per-draw augmentation: seeded from (seed, epoch, position in the global stream), so the
augmented batches are the same for any number of processes or loader workers."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from dcmip.data.pseudo_dataset import PseudoLabelDataset, collate_with_multiplicity
from dcmip.data.transforms import build_train_transforms
from dcmip.sampling import build_sampler
from dcmip.structures import PseudoLabels

GLOBAL_BATCH, STEPS = 8, 3


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from dcmip.config import add_dcmip_config
    from fastreid.config import get_cfg

    root = tmp_path_factory.mktemp("pseudo")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(12):
        path = root / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    cfg = get_cfg()
    add_dcmip_config(cfg)
    cfg.merge_from_list(["INPUT.SIZE_TRAIN", "[32, 16]", "INPUT.PADDING.ENABLED", "True", "INPUT.PADDING.SIZE",
                         "4", "INPUT.FLIP.ENABLED", "True", "INPUT.REA.ENABLED", "True", "INPUT.REA.PROB", "0.5",
                         "SOLVER.IMS_PER_BATCH", str(GLOBAL_BATCH), "UNSUP.SAMPLER.NAME", "ProxyBalancedSampler",
                         "UNSUP.SAMPLER.NUM_INSTANCES", "2"])
    n = len(paths)
    clusters = torch.arange(n) // 4
    cams = torch.arange(n) % 2
    pseudo = PseudoLabels(features=torch.zeros(n, 4), clusters=clusters, cams=cams,
                          proxies=clusters * 2 + cams, indices=torch.arange(n), epoch=3)
    return cfg, paths, pseudo


def _global_batches(setup, world_size, num_workers=0):
    """The global batches of STEPS steps, assembled from every rank's loader in rank order."""
    cfg, paths, pseudo = setup
    dataset = PseudoLabelDataset(paths, pseudo, build_train_transforms(cfg), seed=5)
    per_rank = []
    for rank in range(world_size):
        sampler = build_sampler(cfg, pseudo, seed=7, rank=rank, world_size=world_size)
        loader = torch.utils.data.DataLoader(
            dataset, batch_sampler=torch.utils.data.BatchSampler(
                sampler.with_positions(), GLOBAL_BATCH // world_size, drop_last=True),
            collate_fn=collate_with_multiplicity, num_workers=num_workers)
        it = iter(loader)
        per_rank.append([next(it) for _ in range(STEPS)])
    return [{k: torch.cat([per_rank[r][s][k] for r in range(world_size)]) for k in ("images", "index")}
            for s in range(STEPS)]


def test_same_augmented_batches_for_one_or_two_processes_and_workers(setup):
    one = _global_batches(setup, 1)
    for other in (_global_batches(setup, 2), _global_batches(setup, 1, num_workers=2)):
        for a, b in zip(one, other):
            torch.testing.assert_close(a["index"], b["index"], rtol=0, atol=0)
            torch.testing.assert_close(a["images"], b["images"], rtol=0, atol=0)


def test_two_draws_of_one_image_are_augmented_independently(setup):
    cfg, paths, pseudo = setup
    dataset = PseudoLabelDataset(paths, pseudo, build_train_transforms(cfg), seed=5)
    draws = torch.stack([dataset[(position, 0)]["images"] for position in range(8)])
    assert len({d.numpy().tobytes() for d in draws}) > 1
    torch.testing.assert_close(dataset[(3, 0)]["images"], draws[3], rtol=0, atol=0)
    # Another seed or epoch draws another augmentation stream.
    other = PseudoLabelDataset(paths, pseudo, build_train_transforms(cfg), seed=6)
    assert any(not torch.equal(other[(p, 0)]["images"], draws[p]) for p in range(8))


def test_augmentation_leaves_the_global_generators_alone(setup):
    cfg, paths, pseudo = setup
    dataset = PseudoLabelDataset(paths, pseudo, build_train_transforms(cfg), seed=5)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    dataset[(0, 0)]
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected


def test_positions_cover_the_global_stream_once(setup):
    cfg, _, pseudo = setup
    positions = []
    for rank in range(2):
        it = iter(build_sampler(cfg, pseudo, seed=7, rank=rank, world_size=2).with_positions())
        positions += [next(it) for _ in range(GLOBAL_BATCH // 2 * STEPS)]
    single = iter(build_sampler(cfg, pseudo, seed=7).with_positions())
    assert sorted(positions) == [next(single) for _ in range(GLOBAL_BATCH * STEPS)]


def test_collation_groups_the_batch_on_the_host():
    """The collation's LabelGroups describe the collated labels: each image's row holds its
    label, the multiplicity is the groups' round count, the camera weights are 1 / n_c."""
    items = [{"images": torch.zeros(3, 4, 2), "clusters": c, "proxies": p, "camids": cam, "index": i}
             for i, (c, p, cam) in enumerate([(0, 0, 1), (1, 2, 0), (0, 1, 0), (0, 0, 1), (1, 2, 0)])]
    batch = collate_with_multiplicity(items)
    for key in ("clusters", "proxies", "camids"):
        groups = batch["groups"][key]
        assert torch.equal(groups.labels[groups.inverse], batch[key])
        if key != "camids":
            assert groups.rounds == batch["multiplicity"][key]
    assert batch["groups"]["camids"].mean_weights.tolist() == [0.5, 1 / 3, 1 / 3, 0.5, 1 / 3]
