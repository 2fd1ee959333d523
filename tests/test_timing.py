"""The epoch profile's phase tallies (dcmip.timing): nested phases are billed once."""
import time

import numpy as np

from dcmip import timing
from dcmip.clustering import cluster_features


def _sleep_in(phase, seconds, inner=None):
    with timing.timed(phase):
        time.sleep(seconds)
        if inner:
            _sleep_in(*inner)


def test_nested_phase_is_subtracted_from_the_outer_one():
    timing.pop_times()
    _sleep_in("outer", 0.05, inner=("inner", 0.1))
    times = timing.pop_times()
    assert 0.1 <= times["inner"] < 0.14
    assert 0.05 <= times["outer"] < 0.09  # not 0.15: the inner phase is billed once
    assert timing.pop_times() == {}  # popped means reset


def test_repeated_phases_add_up_and_record_counts_inside_an_open_phase():
    timing.pop_times()
    _sleep_in("a", 0.02)
    _sleep_in("a", 0.02)
    with timing.timed("outer"):
        timing.record("measured", 5.0)
    times = timing.pop_times()
    assert 0.04 <= times["a"] < 0.07
    assert times["measured"] == 5.0
    assert times["outer"] < 0.01  # the recorded 5 s are not also the outer phase's


def test_clustering_bills_knn_jaccard_and_dbscan_separately():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((10, 16)).astype(np.float32)
    features = np.repeat(centres, 8, axis=0) + 0.05 * rng.standard_normal((80, 16)).astype(np.float32)
    timing.pop_times()
    cluster_features(features, k1=6, k2=2, eps=0.5, min_samples=4)
    assert set(timing.pop_times()) == {"knn", "jaccard", "dbscan"}
