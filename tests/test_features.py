"""The epoch-start feature extraction (issue 11 item 2): the image cache, one pass for several
networks and the channels-last forward against fastreid's test loader, on a dozen tiny images of
different sizes with a randomly initialised MobileNetV2 at 128x64 (the CPU configs)."""
import logging

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import dcmip  # noqa: F401
import dcmip.engine.features as features_module
from dcmip.engine.defaults import setup_tool_cfg
from dcmip.engine.features import ImageCache, DecodedImages, extract_features, extract_many
from dcmip.engine.inference import load_model
from fastreid.data.build import build_reid_test_loader
from fastreid.data.common import CommDataset
from fastreid.data.data_utils import read_image
from fastreid.data.transforms import build_transforms

from gloo import free_port, gloo_group
from test_tools import CONFIG

N, BATCH = 11, 4  # 3 batches, the last one short
IMAGE_BYTES = 3 * 128 * 64
OPTS = ["MODEL.BACKBONE.PRETRAIN", "False", "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", str(BATCH)]


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    out = []
    for i in range(N):
        path = root / f"{i:02d}.{'png' if i % 3 else 'jpg'}"
        h, w = rng.integers(60, 200), rng.integers(30, 100)  # resized: not 128x64
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        out.append((str(path), i // 2, i % 3))
    return out


def network(seed):
    """A random MobileNetV2 with BN statistics away from their defaults, in training mode."""
    cfg = setup_tool_cfg(CONFIG, OPTS)
    torch.manual_seed(seed)
    model = load_model(cfg)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return cfg, model.train()


@pytest.fixture(scope="module")
def student():
    return network(1)


@pytest.fixture(scope="module")
def teacher():
    return network(2)[1]


@torch.no_grad()
def fastreid_path(cfg, model, items):
    """What extract_features did before: fastreid's test loader (float images), NCHW."""
    dataset = CommDataset(items, build_transforms(cfg, is_train=False), relabel=False)
    loader, _ = build_reid_test_loader(test_set=dataset, test_batch_size=cfg.TEST.IMS_PER_BATCH, num_query=0,
                                       num_workers=0)
    model.eval()
    out = torch.cat([model(batch) for batch in loader])
    model.train()
    return out


def count_decodes(monkeypatch):
    calls = []
    real = DecodedImages.__getitem__
    monkeypatch.setattr(DecodedImages, "__getitem__", lambda self, k: calls.append(self.indices[k]) or real(self, k))
    return calls


def test_uint8_images_are_the_test_transforms_exactly(student, items):
    cfg, _ = student
    transform = build_transforms(cfg, is_train=False)
    for k, (path, _, _) in enumerate(items):
        i, image = DecodedImages(items, list(range(N)), transform)[k]
        reference = transform(read_image(path))
        assert i == k and image.dtype == torch.uint8 and image.shape == (3, 128, 64)
        assert reference.dtype == torch.float32 and torch.equal(image.float(), reference)


def test_matches_fastreids_loader_within_channels_last_rounding(student, items):
    cfg, model = student
    ours, theirs = extract_features(cfg, model, items), fastreid_path(cfg, model, items)
    assert ours.shape == (N, 1280) and model.training  # the mode is restored
    assert (ours - theirs).abs().max() <= 1e-6


def test_cached_features_equal_uncached_and_decode_nothing(student, items, monkeypatch, caplog):
    cfg, model = student
    uncached = extract_features(cfg, model, items)
    cache = ImageCache(4096)
    decodes = count_decodes(monkeypatch)
    with caplog.at_level(logging.INFO, logger="dcmip.engine.features"):
        filling = extract_features(cfg, model, items, cache=cache)
    assert sorted(decodes) == list(range(N)) and cache.num_images == N
    assert f"image cache: all {N} train images" in caplog.text
    decodes.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dcmip.engine.features"):
        cached = extract_features(cfg, model, items, cache=cache)
    assert decodes == [] and "image cache" not in caplog.text  # said once
    assert torch.equal(filling, uncached) and torch.equal(cached, uncached)


def test_a_budget_smaller_than_the_data_caches_whole_batches_and_says_so(student, items, monkeypatch, caplog):
    cfg, model = student
    uncached = extract_features(cfg, model, items)
    cache = ImageCache(2.5 * BATCH * IMAGE_BYTES / 2 ** 20)  # two batches of 4 fit, not three
    with caplog.at_level(logging.WARNING, logger="dcmip.engine.features"):
        first = extract_features(cfg, model, items, cache=cache)
    assert cache.num_images == 2 * BATCH
    assert f"{2 * BATCH} of the {N} train images of this process fit" in caplog.text
    assert f"the other {N - 2 * BATCH} are read and decoded again every epoch" in caplog.text
    decodes = count_decodes(monkeypatch)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dcmip.engine.features"):
        later = extract_features(cfg, model, items, cache=cache)
    assert decodes == list(range(2 * BATCH, N)) and caplog.text == ""
    assert torch.equal(first, uncached) and torch.equal(later, uncached)


def test_one_pass_for_student_and_teacher_equals_two_passes(student, teacher, items, monkeypatch):
    cfg, model = student
    separate = [extract_features(cfg, m, items) for m in (model, teacher)]
    decodes = count_decodes(monkeypatch)
    both = extract_many(cfg, {"student": model, "teacher": teacher}, items)
    assert sorted(decodes) == list(range(N))  # each image once for both networks
    assert list(both) == ["student", "teacher"] and not torch.equal(both["student"], both["teacher"])
    assert torch.equal(both["student"], separate[0]) and torch.equal(both["teacher"], separate[1])
    assert model.training and teacher.training


def test_bad_input_is_named(student, items):
    cfg, model = student
    cache = ImageCache(64)
    extract_features(cfg, model, items, cache=cache)
    with pytest.raises(ValueError, match="other images than the 10 asked for: use one ImageCache per list"):
        extract_features(cfg, model, items[:10], cache=cache)
    with pytest.raises(ValueError, match="0 turns the cache off"):
        ImageCache(0)
    scaled = DecodedImages(items, [0], lambda image: build_transforms(cfg, is_train=False)(image) / 255)
    with pytest.raises(ValueError, match="not whole numbers in \\[0, 255\\].*Resize \\+ ToTensor"):
        scaled[0]


def _worker(rank, port, items, state, out_dir):
    torch.set_num_threads(1)
    with gloo_group(rank, 2, port):
        cfg, model = network(1)
        model.load_state_dict(state)
        cache = ImageCache(4096)
        uncached = extract_features(cfg, model, items)
        first, later = (extract_features(cfg, model, items, cache=cache) for _ in range(2))
        np.savez(f"{out_dir}/rank{rank}.npz", uncached=uncached.numpy(), first=first.numpy(), later=later.numpy(),
                 cached=torch.cat([i for i, _ in cache.batches]).numpy())


def test_two_gloo_ranks_cache_their_shard_and_gather_every_feature(student, items, tmp_path):
    cfg, model = student
    mp.spawn(_worker, args=(free_port(), items, model.state_dict(), str(tmp_path)), nprocs=2, join=True)
    single = extract_features(cfg, model, items).numpy()
    for rank, shard in enumerate((range(0, 6), range(6, N))):  # fastreid's InferenceSampler
        out = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(out["cached"], list(shard))
        np.testing.assert_array_equal(out["first"], out["uncached"])
        np.testing.assert_array_equal(out["later"], out["uncached"])
        # Batches of TEST.IMS_PER_BATCH / 2 per rank: the same features up to the kernels' rounding.
        np.testing.assert_allclose(out["uncached"], single, rtol=0, atol=1e-6)
