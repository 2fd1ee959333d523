"""Epoch-start feature extraction over the whole train set (METHODS §1 step 1)."""
import logging
import time
from typing import List, Tuple

import torch
from torch import nn

from fastreid.data.build import build_reid_test_loader
from fastreid.data.common import CommDataset
from fastreid.data.transforms import build_transforms

from ..clustering.distributed import gather_features

logger = logging.getLogger(__name__)


@torch.no_grad()
def extract_features(cfg, model: nn.Module, items: List[Tuple[str, object, int]],
                     desc: str = "train features") -> torch.Tensor:
    """(N, d) L2-normalised embeddings of ``items`` in order, with the test transform.

    Under DDP each rank embeds its shard and the shards are all-gathered, so every rank
    returns the full matrix.
    """
    dataset = CommDataset(items, build_transforms(cfg, is_train=False), relabel=False)
    loader, _ = build_reid_test_loader(test_set=dataset, test_batch_size=cfg.TEST.IMS_PER_BATCH,
                                       num_query=0, num_workers=cfg.DATALOADER.NUM_WORKERS)
    was_training = model.training
    model.eval()
    chunks, done, start = [], 0, time.perf_counter()
    log_every = max(1, len(loader) // 5)
    for i, batch in enumerate(loader):
        chunks.append(model(batch))
        done += len(chunks[-1])
        if (i + 1) % log_every == 0 or i + 1 == len(loader):
            logger.info(f"{desc}: {done}/{len(loader.batch_sampler.sampler)} images on this rank, "
                        f"{time.perf_counter() - start:.1f}s")
    model.train(was_training)
    # InferenceSampler yields this rank's shard; every rank needs the full matrix.
    return gather_features(torch.cat(chunks).float(), list(loader.batch_sampler.sampler), len(items))
