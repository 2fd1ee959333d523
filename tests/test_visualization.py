"""The montage of pseudo identities and the curves of metrics.json, on tiny synthetic input:
layout cross-checked against the definitions, thumbnails found by their colour."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from dcmip.clustering import camera_aware_proxies
from dcmip.structures import PseudoLabels
from dcmip.visualization import cluster_montage, montage_rows, plot_curves, read_metrics
from dcmip.visualization.curves import series
from dcmip.visualization.montage import MARGIN, ROW_H, allocate, fit_text, row_capacity


def colour(i):
    # Saturated and distinct per image: never the white / grey / pale-blue of background,
    # bands and anti-aliased text.
    return (255 - 3 * i, 4 * i, 40 + 2 * i)


@pytest.fixture
def images(tmp_path):
    """60 solid-colour 16x32 PNGs (the thumbnails' 1:2 aspect, so nothing is padded)."""
    paths = []
    for i in range(60):
        path = tmp_path / f"{i:03d}.png"
        Image.new("RGB", (16, 32), colour(i)).save(path)
        paths.append(str(path))
    return paths


# 5 clusters (sizes 12, 9, 6, 3, 2) over 4 cameras, and 28 outliers.
LABELS = np.array([0] * 12 + [1] * 9 + [2] * 6 + [3] * 3 + [4] * 2 + [-1] * 28)
CAMS = np.arange(60) % 4


def test_allocate_exact_cases():
    np.testing.assert_array_equal(allocate([2, 3], 10), [2, 3])  # everything fits
    # one each, then 5 left shared by 9:0:4 -> quotas 3.46, 0, 1.54 -> floors 3, 0, 1 and the
    # last slot to the largest remainder (0.54).
    np.testing.assert_array_equal(allocate([10, 1, 5], 8), [4, 1, 3])
    np.testing.assert_array_equal(allocate([2, 5, 3], 2), [0, 1, 1])  # fewer slots than cameras
    for counts, capacity in (([7, 7, 7], 10), ([30, 1, 1, 1], 6), ([1, 1], 1)):
        shown = allocate(counts, capacity)
        assert shown.sum() == min(capacity, sum(counts)) and (shown <= np.array(counts)).all()


def test_rows_are_the_sampled_clusters_largest_first_then_the_outliers():
    rows = montage_rows(LABELS, CAMS, num_clusters=3, capacity=5, seed=1)
    assert len(rows) == 3 + 1 and rows[-1].cluster == -1 and rows[-1].size == 28
    clusters = [r.cluster for r in rows[:-1]]
    assert len(set(clusters)) == 3 and set(clusters) <= {0, 1, 2, 3, 4}
    sizes = [r.size for r in rows[:-1]]
    assert sizes == sorted(sizes, reverse=True) and sizes == [int((LABELS == c).sum()) for c in clusters]
    for row in rows:
        members = np.flatnonzero(LABELS == row.cluster) if row.cluster >= 0 else np.flatnonzero(LABELS < 0)
        cams = [g.cam for g in row.groups]
        assert cams == sorted(cams)
        # Naive per-camera totals of the row, and shown images drawn from the right camera.
        for g in row.groups:
            assert g.total == int((CAMS[members] == g.cam).sum())
            assert set(g.shown) <= set(members[CAMS[members] == g.cam].tolist())
        assert sum(len(g.shown) for g in row.groups) == min(5, row.size)
    # Seeded: the same seed draws the same montage, another seed (here) other clusters.
    assert montage_rows(LABELS, CAMS, 3, 5, seed=1) == rows
    assert [r.cluster for r in montage_rows(LABELS, CAMS, 3, 5, seed=2)] != clusters
    # Fewer clusters than asked: all of them; no outliers: no outlier row.
    assert len(montage_rows(np.where(LABELS < 0, 0, LABELS), CAMS, 8, 5)) == 5


def test_montage_draws_each_row_where_its_images_are(images):
    width = 400
    capacity = row_capacity(width)
    image = cluster_montage(images, LABELS, CAMS, num_clusters=2, seed=0, title="epoch 3", width=width)
    rows = montage_rows(LABELS, CAMS, 2, capacity, seed=0)
    assert image.width == width
    pixels = np.asarray(image)
    top = image.height - MARGIN - len(rows) * ROW_H
    for r, row in enumerate(rows):
        band = pixels[top + r * ROW_H: top + (r + 1) * ROW_H].reshape(-1, 3)
        present = {tuple(p) for p in np.unique(band, axis=0)}
        shown = {i for g in row.groups for i in g.shown}
        assert {colour(i) for i in shown} <= present, f"row {r}: a shown thumbnail is missing"
        assert not {colour(i) for i in range(60) if i not in shown} & present, f"row {r}: a stray image"
    # One more sampled cluster is one more row of the same height.
    taller = cluster_montage(images, LABELS, CAMS, num_clusters=3, seed=0, title="epoch 3", width=width)
    assert taller.height - image.height == ROW_H


def test_camera_labels_shorten_to_fit():
    from PIL import ImageDraw, ImageFont

    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = ImageFont.load_default(size=12)
    options = ("cam entrance (12)", "entrance (12)", "entrance")
    assert fit_text(draw, font, 500, options) == "cam entrance (12)"
    wide = draw.textlength("entrance (12)", font=font)
    assert fit_text(draw, font, wide, options) == "entrance (12)"
    cut = fit_text(draw, font, 30, options)
    assert cut.endswith("..") and "entrance".startswith(cut[:-2]) and draw.textlength(cut, font=font) <= 30


def clusters_spanning_cameras(clusters: np.ndarray, cams: np.ndarray) -> int:
    """PseudoLabels.num_multi_camera_clusters of these labels (proxies as the clustering hook
    makes them)."""
    pseudo = PseudoLabels(features=torch.zeros(len(clusters), 2), clusters=torch.as_tensor(clusters),
                          cams=torch.as_tensor(cams), proxies=torch.as_tensor(camera_aware_proxies(clusters, cams)),
                          indices=torch.arange(len(clusters)))
    return pseudo.num_multi_camera_clusters


def test_clusters_spanning_cameras_matches_a_naive_count():
    rng = np.random.default_rng(0)
    clusters, cams = rng.integers(0, 20, 300), rng.integers(0, 3, 300)
    clusters[clusters == 7] = 5  # cluster 7 empty, 5 large
    naive = sum(len(set(cams[clusters == c])) > 1 for c in set(clusters.tolist()))
    assert clusters_spanning_cameras(clusters, cams) == naive
    assert clusters_spanning_cameras(clusters, np.zeros(300, dtype=np.int64)) == 0


def write_metrics(path):
    records = [
        {"iteration": 0, "cluster/clusters": 10, "cluster/clusters_multi_camera": 2, "cluster/images_kept": 50},
        {"iteration": 1, "total_loss": 9.0, "loss_a": 9.0},
        {"iteration": 3, "total_loss": 7.0, "loss_a": 7.0},
        {"iteration": 3, "mAP": 20.0, "cluster/clusters": 99},  # same iteration, late line
        {"iteration": 3, "cluster/clusters": 12, "cluster/clusters_multi_camera": 5, "cluster/images_kept": 60},
        {"iteration": 5, "total_loss": 5.0, "loss_a": 5.0},
        {"iteration": 7, "total_loss": 4.0, "loss_a": 4.0, "mAP": 30.0},
    ]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def test_series_places_epoch_and_step_scalars(tmp_path):
    write_metrics(tmp_path / "metrics.json")
    records = read_metrics(str(tmp_path / "metrics.json"))
    # 4 steps per epoch: clustering at the start of epochs 0 and 1, evaluations after them.
    assert series(records, "cluster/clusters", 4) == ([0, 1], [10.0, 12.0])  # the last line wins
    assert series(records, "mAP", 4) == ([1, 2], [20.0, 30.0])
    assert series(records, "total_loss", 4, per_step=True) == ([0.5, 1.0, 1.5, 2.0], [9.0, 7.0, 5.0, 4.0])
    assert series(records, "cluster/nmi", 4) == ([], [])


def test_curves_image(tmp_path):
    pytest.importorskip("matplotlib")
    write_metrics(tmp_path / "metrics.json")
    image = plot_curves(read_metrics(str(tmp_path / "metrics.json")), 4, title="tiny")
    assert image.size == (1500, 900) and image.mode == "RGB"
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 20  # lines and text were drawn


def test_without_matplotlib_the_curves_are_one_log_line(tmp_path, monkeypatch, caplog):
    import importlib.util
    import logging
    from types import SimpleNamespace

    from dcmip.engine.visualization import CurvesHook

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else
                        find_spec(name, *a))
    write_metrics(tmp_path / "metrics.json")
    cfg = SimpleNamespace(OUTPUT_DIR=str(tmp_path))
    hook = CurvesHook(cfg)
    hook.trainer = SimpleNamespace(iter=8, max_iter=8)
    with caplog.at_level(logging.INFO, logger="dcmip.engine.visualization"):
        hook.after_train()
    assert [r.getMessage() for r in caplog.records] == [
        "curves.png not drawn: matplotlib is not installed (pip install matplotlib, or the extra: "
        "pip install -e '.[plots]')"]
    assert not (tmp_path / "curves.png").exists()


def test_without_tensorboard_the_writers_are_console_and_json(tmp_path, monkeypatch, caplog):
    import logging
    from types import SimpleNamespace

    import dcmip.engine.trainer as trainer_module
    from dcmip.engine.events import EpochJSONWriter, EpochMetricPrinter, EpochTensorboardWriter

    fake = SimpleNamespace(max_iter=8, cfg=SimpleNamespace(OUTPUT_DIR=str(tmp_path)))
    monkeypatch.setattr(trainer_module, "tensorboard_available", lambda: False)
    with caplog.at_level(logging.INFO, logger="dcmip.engine.trainer"):
        writers = trainer_module.UnsupervisedTrainer.build_writers(fake)
    assert [type(w) for w in writers] == [EpochMetricPrinter, EpochJSONWriter]
    assert "tensorboard is not installed" in caplog.text
    for w in writers:
        w.close()
    pytest.importorskip("tensorboard")
    monkeypatch.setattr(trainer_module, "tensorboard_available", lambda: True)
    writers = trainer_module.UnsupervisedTrainer.build_writers(fake)
    assert [type(w) for w in writers] == [EpochMetricPrinter, EpochJSONWriter, EpochTensorboardWriter]
    for w in writers:
        w.close()
