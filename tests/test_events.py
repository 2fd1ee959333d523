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


def test_tensorboard_gets_late_scalars_and_the_montage(tmp_path):
    import numpy as np
    import pytest

    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from dcmip.engine.events import EpochTensorboardWriter

    writer = EpochTensorboardWriter(str(tmp_path))
    with EventStorage(0) as storage:
        for it in range(4):
            storage.iter = it
            storage.put_scalar("total_loss", float(it), smoothing_hint=False)
            writer.write()
        storage.put_scalars(mAP=12.5, smoothing_hint=False)  # after the epoch, at iteration 3
        storage.put_image("montage", np.full((3, 8, 16), 200, dtype=np.uint8))
        writer.write()
        writer.write()  # nothing new
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("total_loss")] == [(i, float(i)) for i in range(4)]
    assert [(e.step, e.value) for e in events.Scalars("mAP")] == [(3, 12.5)]
    images = events.Images("montage")
    assert [(e.step, e.width, e.height) for e in images] == [(3, 16, 8)]


def test_metric_printer_prints_an_iteration_once(caplog):
    import logging

    from dcmip.engine.events import EpochMetricPrinter

    printer = EpochMetricPrinter(max_iter=10)
    with EventStorage(0) as storage, caplog.at_level(logging.INFO, logger="fastreid.utils.events"):
        storage.epoch, storage.iter = 0, 4  # set by the trainer's loop
        storage.put_scalar("total_loss", 1.0)
        printer.write()
        printer.write()  # the writer's after-epoch call at the same iteration
        storage.iter = 5
        printer.write()
    assert sum("epoch/iter: 0/4 " in r.getMessage() for r in caplog.records) == 1
    assert sum("epoch/iter: 0/5 " in r.getMessage() for r in caplog.records) == 1
