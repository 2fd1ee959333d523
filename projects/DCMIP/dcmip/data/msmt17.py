"""MSMT17 with the training split both authors train on: ``list_train`` + ``list_val``.

fastreid's ``MSMT17`` trains on ``list_train.txt`` only (30,248 images); the val list joins it
only under ``combineall``, which also merges query and gallery into the training set. The
cluster-contrast and DCMIP codes train on a ``bounding_box_train`` folder that holds train and
val (32,621 images), O2CAP on the two lists (METHODS §1 "Data"). :class:`MSMT17TrainVal` is
fastreid's dataset with the val list added to ``train``; query and gallery are unchanged.
"""
import logging
import os

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.msmt17 import MSMT17, VERSION_DICT

from ..registry import DatasetFormatError, DatasetNotFoundError

__all__ = ["MSMT17TrainVal"]

logger = logging.getLogger(__name__)


@DATASET_REGISTRY.register()
class MSMT17TrainVal(MSMT17):
    """``<root>/MSMT17_V1`` with ``train/``, ``test/`` (``MSMT17_V2``: ``mask_train_v2/``,
    ``mask_test_v2/``) and the four lists
    ``list_{train,val,query,gallery}.txt`` (``<folder>/<image> <pid>`` per line); ``train``
    holds the images of ``list_train.txt`` and ``list_val.txt``."""

    def __init__(self, root="datasets", **kwargs):
        versions = [os.path.join(root, v) for v in VERSION_DICT]
        main_dir = next((d for d in versions if os.path.isdir(d)), None)
        if main_dir is None:
            raise DatasetNotFoundError(
                f"MSMT17TrainVal: none of {', '.join(versions)} exists. Unpack MSMT17 there (the "
                f"folder holds train/, test/ and list_train.txt, list_val.txt, list_query.txt, "
                f"list_gallery.txt), or point FASTREID_DATASETS at its parent.")
        folders = VERSION_DICT[os.path.basename(main_dir)]
        missing = [f"{folders[key]}/" for key in ("train_dir", "test_dir")
                   if not os.path.isdir(os.path.join(main_dir, folders[key]))]
        missing += [name for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
                    if not os.path.isfile(os.path.join(main_dir, name))]
        if missing:
            raise DatasetFormatError(f"MSMT17TrainVal: {main_dir} lacks {', '.join(missing)}; MSMT17 ships "
                                     f"its image folders and the four lists side by side.")
        kwargs.pop("combineall", None)  # would also move query and gallery into train
        super().__init__(root=root, **kwargs)
        train = self.train
        val = self.process_dir(self.train_dir, self.list_val_path)
        self._train = train + val
        if self.mode == "train":
            self.data = self._train
        logger.info(f"{type(self).__name__}: train = list_train + list_val ({len(self._train)} images) "
                    f"= {len(train)} + {len(val)}")
