"""Writers that keep the per-epoch scalars (clustering statistics, evaluations):
``metrics.json`` and, when ``tensorboard`` is installed, TensorBoard."""
from collections import defaultdict
import json
import os
from typing import Dict

from fastreid.utils.events import CommonMetricPrinter, JSONWriter, TensorboardXWriter, get_event_storage


def new_scalars(window_size: int, last_write_per_key: Dict[str, int]) -> Dict[int, Dict[str, float]]:
    """The storage's scalars not written yet, by iteration, remembering the last written
    iteration per key in ``last_write_per_key``.

    fastreid's writers drop every scalar whose iteration is not newer than the last one they
    wrote. Epoch-level scalars are put after the epoch's last step has been written (the
    evaluation in ``after_epoch``, the clustering statistics in the next ``before_epoch``,
    both at that step's iteration), so with a writer period that divides UNSUP.ITERS every
    one of them was lost. Here a scalar is written once per (key, iteration).
    """
    to_save = defaultdict(dict)
    for k, (v, it) in get_event_storage().latest_with_smoothing_hint(window_size).items():
        if it > last_write_per_key[k]:
            to_save[it][k] = v
            last_write_per_key[k] = it
    return to_save


class EpochJSONWriter(JSONWriter):
    """fastreid's JSONWriter with :func:`new_scalars`: late scalars go to a second line with
    the same ``iteration``."""

    def __init__(self, json_file, window_size=20):
        super().__init__(json_file, window_size)
        self._last_write_per_key = defaultdict(lambda: -1)

    def write(self):
        to_save = new_scalars(self._window_size, self._last_write_per_key)
        for it in sorted(to_save):
            self._file_handle.write(json.dumps({**to_save[it], "iteration": it}, sort_keys=True) + "\n")
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())


class EpochTensorboardWriter(TensorboardXWriter):
    """fastreid's TensorBoard writer with :func:`new_scalars`, and the images put into the
    storage (the per-epoch montage of :mod:`dcmip.engine.visualization`)."""

    def __init__(self, log_dir: str, window_size: int = 20):
        super().__init__(log_dir, window_size)
        self._last_write_per_key = defaultdict(lambda: -1)

    def write(self):
        for it, scalars in sorted(new_scalars(self._window_size, self._last_write_per_key).items()):
            for k, v in scalars.items():
                self._writer.add_scalar(k, v, it)
        storage = get_event_storage()
        for name, image, it in storage._vis_data:
            self._writer.add_image(name, image, it)
        storage.clear_images()
        self._writer.flush()


class EpochMetricPrinter(CommonMetricPrinter):
    """fastreid's console line (eta, losses, lr), once per iteration: the writers also run
    after every epoch for the late epoch scalars, which printed the epoch's last line twice."""

    def __init__(self, max_iter: int):
        super().__init__(max_iter)
        self._last_printed = -1

    def write(self):
        iteration = get_event_storage().iter
        if iteration > self._last_printed:
            self._last_printed = iteration
            super().write()
