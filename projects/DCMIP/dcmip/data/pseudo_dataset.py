"""The training set of one epoch: the pseudo-labelled images and their batch collation."""
import random
from contextlib import contextmanager
from typing import Dict, List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from fastreid.data.build import fast_batch_collator
from fastreid.data.data_utils import read_image

from ..structures import LabelGroups, PseudoLabels


class PseudoLabelDataset(Dataset):
    """Images kept by this epoch's clustering, with their cluster, proxy and camera.

    Items are looked up by ``(position, row)`` (:meth:`PseudoLabelSampler.with_positions`):
    ``row`` is the row in :class:`PseudoLabels`, so memories and statistics can look up
    per-image data without a host round trip; ``position`` is the draw's place in the epoch's
    global batch stream. The augmentation of a draw is seeded from ``(seed, epoch, position)``
    alone, so the same config gives the same augmented batches whatever the number of
    processes or loader workers, and two draws of one image are augmented differently.
    """

    def __init__(self, img_paths: List[str], pseudo: PseudoLabels, transform, seed: int = 0):
        self.img_paths = [img_paths[i] for i in pseudo.indices.tolist()]
        self.clusters = pseudo.clusters.tolist()
        self.proxies = pseudo.proxies.tolist()
        self.cams = pseudo.cams.tolist()
        self.transform = transform
        self.seed, self.epoch = seed, pseudo.epoch

    def __len__(self):
        return len(self.img_paths)

    def __getitem__(self, key: Tuple[int, int]) -> Dict:
        position, row = key
        image = read_image(self.img_paths[row])
        with seeded_random_state(augmentation_seed(self.seed, self.epoch, position)):
            image = self.transform(image)
        return {
            "images": image,
            "clusters": self.clusters[row],
            "proxies": self.proxies[row],
            "camids": self.cams[row],
            "index": row,
        }


def augmentation_seed(seed: int, epoch: int, position: int) -> int:
    """A 32-bit seed drawn from ``(seed, epoch, position)`` (numpy's SeedSequence, so nearby
    positions give unrelated streams)."""
    return int(np.random.SeedSequence((seed, epoch, position)).generate_state(1)[0])


@contextmanager
def seeded_random_state(seed: int):
    """Seed Python's, numpy's and torch's global (CPU) generators, which torchvision's and
    fastreid's transforms draw from, and restore them afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def collate_with_multiplicity(items: List[Dict]) -> Dict:
    """fastreid's collation, plus host-side counts that memories use instead of reading them
    back from the device (METHODS §5): ``multiplicity``, how often one cluster / proxy occurs
    in the batch (the round count of the sequential update), and ``groups``, the batch grouped
    by cluster, by proxy and by camera (:class:`LabelGroups`: the memories' per-label
    bookkeeping, done here in the loader's workers instead of in the training step)."""
    batch = fast_batch_collator(items)
    batch["groups"] = group_batch(batch)
    batch["multiplicity"] = {key: batch["groups"][key].rounds for key in ("clusters", "proxies")}
    return batch


def group_batch(batch: Dict) -> Dict[str, LabelGroups]:
    """The batch's clusters, proxies and cameras grouped on the host (:class:`LabelGroups`), as
    ``batch["groups"]``: what the collation adds, and what batches built elsewhere (benchmarks,
    checks) add to run the training path."""
    return {key: LabelGroups.from_labels(batch[key]) for key in ("clusters", "proxies", "camids")}
