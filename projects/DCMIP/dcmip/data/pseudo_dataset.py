"""The training set of one epoch: the pseudo-labelled images and their batch collation."""
from typing import Dict, List

import numpy as np
import torch
from torch.utils.data import Dataset

from fastreid.data.build import fast_batch_collator
from fastreid.data.data_utils import read_image

from ..structures import PseudoLabels


class PseudoLabelDataset(Dataset):
    """Images kept by this epoch's clustering, with their cluster, proxy and camera.

    ``index`` is the row in :class:`PseudoLabels`, so memories and statistics can look up
    per-image data without a host round trip.
    """

    def __init__(self, img_paths: List[str], pseudo: PseudoLabels, transform):
        self.img_paths = [img_paths[i] for i in pseudo.indices.tolist()]
        self.clusters = pseudo.clusters.tolist()
        self.proxies = pseudo.proxies.tolist()
        self.cams = pseudo.cams.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.img_paths)

    def __getitem__(self, row: int) -> Dict:
        return {
            "images": self.transform(read_image(self.img_paths[row])),
            "clusters": self.clusters[row],
            "proxies": self.proxies[row],
            "camids": self.cams[row],
            "index": row,
        }


def collate_with_multiplicity(items: List[Dict]) -> Dict:
    """fastreid's collation, plus a host-side bound on how often one cluster / proxy occurs
    in the batch. Memories use it as the round count of the sequential update, so that they
    never read it back from the device (METHODS §5)."""
    batch = fast_batch_collator(items)
    batch["multiplicity"] = {
        key: int(np.bincount([item[key] for item in items]).max()) for key in ("clusters", "proxies")
    }
    return batch
