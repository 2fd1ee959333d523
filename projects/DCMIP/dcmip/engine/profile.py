"""Where an epoch's time goes: one log line and ``time/<phase>`` scalars per epoch."""
import logging
import time

from fastreid.engine.train_loop import HookBase

from ..timing import pop_times

logger = logging.getLogger(__name__)

# Log order: the clustering step's phases, then what happens after the steps.
PHASES = ("features", "knn", "jaccard", "dbscan", "montage", "train", "evaluation", "checkpoint")


class EpochProfileHook(HookBase):
    """Reads the phase tallies of :mod:`dcmip.timing` once per epoch. Registered after the
    clustering, montage, evaluation and checkpoint hooks and before the writers: its
    ``before_epoch`` then runs when the clustering step is over, so the time from there to its
    ``after_epoch`` is the training steps (data loading included) plus the timed phases that
    ran in other hooks' ``after_epoch``, which are subtracted."""

    def before_epoch(self):
        self._before = pop_times()
        self._start = time.perf_counter()

    def after_epoch(self):
        after = pop_times()
        times = {**self._before}
        for phase, seconds in after.items():
            times[phase] = times.get(phase, 0.0) + seconds
        times["train"] = time.perf_counter() - self._start - sum(after.values())
        ordered = [p for p in PHASES if p in times] + sorted(set(times) - set(PHASES))
        total = sum(times.values())
        logger.info(f"epoch {self.trainer.epoch} time: {total:.1f}s = "
                    + ", ".join(f"{p} {times[p]:.1f}s" for p in ordered))
        self.trainer.storage.put_scalars(**{f"time/{p}": times[p] for p in ordered}, smoothing_hint=False)
