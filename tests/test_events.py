"""metrics.json keeps the epoch-level scalars put after an epoch's last step was written."""
import json

import dcmip  # noqa: F401  (compat patches before fastreid imports)
from fastreid.utils.events import EventStorage

from dcmip.engine.events import EpochJSONWriter


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def test_scalars_put_at_an_already_written_iteration_are_written(tmp_path):
    path = tmp_path / "metrics.json"
    writer = EpochJSONWriter(str(path))
    with EventStorage(0) as storage:
        for it in range(4):
            storage.iter = it
            storage.put_scalar("time", 0.1 * (it + 1))
            writer.write()  # a writer period of 1: every step is written
        # after_epoch evaluation, then the next epoch's clustering statistics, both at iteration 3
        storage.put_scalars(mAP=12.5, smoothing_hint=False)
        writer.write()
        storage.put_scalars(**{"cluster/clusters": 40.0}, smoothing_hint=False)
        writer.write()
        writer.write()  # nothing new: no line
    writer.close()
    lines = read(path)
    assert [r["iteration"] for r in lines] == [0, 1, 2, 3, 3, 3]
    assert lines[4] == {"iteration": 3, "mAP": 12.5}
    assert lines[5] == {"iteration": 3, "cluster/clusters": 40.0}
    assert sum("time" in r for r in lines) == 4


def test_one_line_per_iteration_when_scalars_arrive_together(tmp_path):
    path = tmp_path / "metrics.json"
    writer = EpochJSONWriter(str(path))
    with EventStorage(0) as storage:
        storage.iter = 7
        storage.put_scalars(a=1.0, b=2.0, smoothing_hint=False)
        storage.iter = 9
        storage.put_scalar("a", 3.0, smoothing_hint=False)
        writer.write()
    writer.close()
    assert read(path) == [{"iteration": 7, "b": 2.0}, {"iteration": 9, "a": 3.0}]
