"""metrics.json that keeps the per-epoch scalars (clustering statistics, evaluations)."""
from collections import defaultdict
import json
import os

from fastreid.utils.events import JSONWriter, get_event_storage


class EpochJSONWriter(JSONWriter):
    """fastreid's JSONWriter, remembering the last written iteration per key.

    fastreid's writer drops every scalar whose iteration is not newer than the last line it
    wrote. Epoch-level scalars are put after the epoch's last step has been written (the
    evaluation in ``after_epoch``, the clustering statistics in the next ``before_epoch``,
    both at that step's iteration), so with a writer period that divides UNSUP.ITERS every
    one of them was lost. Here a scalar is written once per (key, iteration): late scalars
    go to a second line with the same ``iteration``.
    """

    def __init__(self, json_file, window_size=20):
        super().__init__(json_file, window_size)
        self._last_write_per_key = defaultdict(lambda: -1)

    def write(self):
        storage = get_event_storage()
        to_save = defaultdict(dict)
        for k, (v, it) in storage.latest_with_smoothing_hint(self._window_size).items():
            if it > self._last_write_per_key[k]:
                to_save[it][k] = v
                self._last_write_per_key[k] = it
        for it in sorted(to_save):
            self._file_handle.write(json.dumps({**to_save[it], "iteration": it}, sort_keys=True) + "\n")
        self._file_handle.flush()
        os.fsync(self._file_handle.fileno())
