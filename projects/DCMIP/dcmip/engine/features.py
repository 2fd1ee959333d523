"""Epoch-start feature extraction over the whole train set (METHODS §1 step 1).

On the CPU the forward pass bounds it, not the images (docs/benchmarks/extraction.md: Market's
128x64 JPEGs decode and resize at thousands per second, MobileNetV2 embeds a few hundred), so:

* On the CPU the networks see the images channels-last (NHWC): oneDNN's convolutions are about
  twice as fast there than in NCHW. The features differ from NCHW's by the order of the sums
  only (<= 3e-7 on the Market split; checked <= 1e-6 by tests/test_features.py).
* Several networks (DCMIP's student and EMA teacher) take each batch in turn: one pass over
  the images.
* :class:`ImageCache` keeps the decoded images across epochs as uint8 (the test transform,
  Resize + ToTensor without scaling, gives whole numbers in [0, 255], checked for every image),
  so later epochs neither read, decode nor start loader workers. ``uint8 -> float`` is exact,
  so cached and decoded images give bit-identical features.
"""
import itertools
import logging
import time
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fastreid.data.data_utils import read_image
from fastreid.data.samplers import InferenceSampler
from fastreid.data.transforms import build_transforms
from fastreid.utils import comm

from ..clustering.distributed import gather_features

logger = logging.getLogger(__name__)

Item = Tuple[str, object, object]


class DecodedImages(Dataset):
    """``(i, image)`` for item ``indices[k]``: the test transform's image as uint8 (3, H, W)."""

    def __init__(self, items: Sequence[Item], indices: Sequence[int], transform):
        self.items, self.indices, self.transform = items, indices, transform

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, k):
        i = self.indices[k]
        image = self.transform(read_image(self.items[i][0]))
        as_uint8 = image.to(torch.uint8)
        # The loader and the cache carry uint8; this keeps that exact.
        if not torch.equal(as_uint8.float(), image):
            raise ValueError(f"{self.items[i][0]}: the test transform (INPUT.SIZE_TEST, INPUT.CROP) gave values "
                             f"that are not whole numbers in [0, 255], which the feature extraction sends as "
                             f"uint8. Use fastreid's test transform (Resize + ToTensor, no normalisation).")
        return i, as_uint8


class ImageCache:
    """This process's decoded train images, kept from the first extraction to the next ones.

    The first extraction offers every batch; whole batches are kept, in order, while they fit
    in ``budget_mb`` MiB (UNSUP.FEATURE_CACHE_MB), so the cached images are a prefix of this
    process's shard and the rest are decoded again every epoch in the same batches. Under DDP
    each process caches its own shard only.
    """

    def __init__(self, budget_mb: float):
        if budget_mb <= 0:
            raise ValueError(f"UNSUP.FEATURE_CACHE_MB {budget_mb}: an image cache needs a positive budget "
                             f"(0 turns the cache off: build none).")
        self.budget_mb = budget_mb
        self.batches: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.paths: Optional[Tuple[str, ...]] = None
        self.filled = False
        self._bytes = 0
        self._full = False

    @property
    def num_images(self) -> int:
        return sum(len(indices) for indices, _ in self.batches)

    def check(self, paths: Tuple[str, ...]) -> None:
        """The cache serves one list of images; ``paths`` is this process's shard of it."""
        if self.paths is None:
            self.paths = paths
        elif self.paths != paths:
            raise ValueError(f"this image cache holds {len(self.paths):,} other images than the {len(paths):,} "
                             f"asked for: use one ImageCache per list of images.")

    def offer(self, indices: torch.Tensor, images: torch.Tensor) -> None:
        size = images.numel() * images.element_size()
        if self._full or self._bytes + size > self.budget_mb * 2 ** 20:
            self._full = True
            return
        # A copy out of the loader's shared memory, which is meant to be short-lived.
        self.batches.append((indices.clone(), images.clone()))
        self._bytes += size

    def close(self, total: int, image_bytes: int) -> None:
        """The first extraction is over: say once what the cache holds."""
        self.filled = True
        cached = self.num_images
        if cached < total:
            logger.warning(
                f"UNSUP.FEATURE_CACHE_MB {self.budget_mb}: {cached:,} of the {total:,} train images of this process "
                f"fit in the image cache ({image_bytes / 1024:.1f} KiB each); the other {total - cached:,} are "
                f"read and decoded again every epoch. UNSUP.FEATURE_CACHE_MB "
                f"{-(-total * image_bytes // 2 ** 20) + 1} would hold them all.")
        else:
            logger.info(f"image cache: all {total:,} train images of this process, {self._bytes / 2 ** 20:.0f} MiB "
                        f"(UNSUP.FEATURE_CACHE_MB {self.budget_mb}); later epochs read none.")


def _on_cpu(model: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


@torch.no_grad()
def extract_many(cfg, models: Dict[str, nn.Module], items: Sequence[Item],
                 cache: Optional[ImageCache] = None) -> Dict[str, torch.Tensor]:
    """For each ``{desc: model}``, the (N, d) L2-normalised embeddings of ``items`` in order,
    with fastreid's test transform, from one pass over the images.

    Batches of TEST.IMS_PER_BATCH / world size, as fastreid's test loader makes them (the
    batches are the same whether or not they come from ``cache``). Under DDP each rank embeds
    its shard (fastreid's InferenceSampler) and the shards are all-gathered, so every rank
    returns the full matrices.
    """
    if not models:
        raise ValueError("extract_many needs at least one model")
    indices = list(InferenceSampler(len(items)))
    if cache is not None:
        cache.check(tuple(items[i][0] for i in indices))
    cached = cache.batches if cache is not None else []
    todo = indices[sum(len(idx) for idx, _ in cached):]
    loader = None
    if todo:
        on_gpu = not all(_on_cpu(m) for m in models.values())
        loader = DataLoader(DecodedImages(items, todo, build_transforms(cfg, is_train=False)),
                            batch_size=cfg.TEST.IMS_PER_BATCH // comm.get_world_size(),
                            num_workers=cfg.DATALOADER.NUM_WORKERS, pin_memory=on_gpu)
    fill = cache is not None and not cache.filled
    was_training = {desc: m.training for desc, m in models.items()}
    channels_last = {desc: _on_cpu(m) for desc, m in models.items()}
    for m in models.values():
        m.eval()

    chunks: Dict[str, List[torch.Tensor]] = {desc: [] for desc in models}
    order, done, start = [], 0, time.perf_counter()
    num_batches = len(cached) + (len(loader) if loader is not None else 0)
    log_every = max(1, num_batches // 5)
    for b, (idx, images) in enumerate(itertools.chain(cached, loader if loader is not None else ())):
        if fill:
            cache.offer(idx, images)
        x = images.float()
        for desc, model in models.items():
            inputs = x.contiguous(memory_format=torch.channels_last) if channels_last[desc] else x
            chunks[desc].append(model({"images": inputs}).float())
        order.append(idx)
        done += len(idx)
        if (b + 1) % log_every == 0 or b + 1 == num_batches:
            logger.info(f"{' and '.join(models)}: {done}/{len(indices)} images on this rank, "
                        f"{time.perf_counter() - start:.1f}s")
    if fill:
        cache.close(len(indices), images[0].numel())
    for desc, m in models.items():
        m.train(was_training[desc])
    order = torch.cat(order)
    # Every rank needs the full matrices.
    return {desc: gather_features(torch.cat(c), order, len(items)) for desc, c in chunks.items()}


def extract_features(cfg, model: nn.Module, items: Sequence[Item], desc: str = "train features",
                     cache: Optional[ImageCache] = None) -> torch.Tensor:
    """(N, d) L2-normalised embeddings of ``items`` in order (:func:`extract_many` with one model)."""
    return extract_many(cfg, {desc: model}, items, cache)[desc]
