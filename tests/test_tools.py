"""The inference tools (issue 14): extract_features, visualize_ranks, export_onnx, on a tiny
three-camera folder with MobileNetV2 at 128x64 (the CPU configs), in process."""
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import dcmip  # noqa: F401
from dcmip.engine.checkpoint import AtomicCheckpointer, checkpoint_metadata
from dcmip.engine.defaults import setup_tool_cfg
from dcmip.engine.inference import load_model
from dcmip.export import MissingExtraError, require
from dcmip.rank_list import MATCH, MISMATCH, draw_rank_page, rank_lists, select_queries
from dcmip.registry import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "O2CAP", "demo_cpu.yml")
OPTS = ["MODEL.BACKBONE.PRETRAIN", "False", "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "4"]
# Random names at random depths below three cameras; sizes differ so the resize matters.
FILES = {"gate": ["Xq81.jpg", "2024/05/01/ab_c.JPG"], "lobby": ["z.png", "deep/er/still/k9.bmp", "Q.jpeg"],
         "yard": ["0001.jpg", "a/b/7f3e.png"]}


def tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cams")
    rng = np.random.default_rng(0)
    for cam, names in FILES.items():
        for name in names:
            path = root / cam / name
            path.parent.mkdir(parents=True, exist_ok=True)
            h, w = rng.integers(60, 200), rng.integers(30, 100)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    (root / "gate" / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised model saved as a training checkpoint, and the model itself."""
    cfg = setup_tool_cfg(CONFIG, OPTS)
    torch.manual_seed(1)
    model = load_model(cfg)
    with torch.no_grad():  # BN statistics away from their defaults, so loading them matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d) or type(m).__name__ == "BatchNorm":
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    out = tmp_path_factory.mktemp("ckpt")
    AtomicCheckpointer(model, str(out), metadata=checkpoint_metadata(cfg)).save("model_final")
    return str(out / "model_final.pth"), model


@pytest.fixture(scope="module")
def extracted(folder, checkpoint, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("feats") / "feats.npz")
    args = tool("extract_features").get_parser().parse_args(
        ["--config-file", CONFIG, "--input", str(folder), "--output", output, *OPTS, "MODEL.WEIGHTS", checkpoint[0]])
    tool("extract_features").main(args)
    return output


def naive_features(model, path):
    """The model's embedding of one image, by hand: RGB, bicubic resize to 128x64, values in
    [0, 255], (x - mean) / std, backbone, heads, L2 normalisation."""
    img = Image.open(path).convert("RGB").resize((64, 128), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]
    x = (x - model.pixel_mean.cpu()) / model.pixel_std.cpu()
    with torch.no_grad():
        return F.normalize(model.heads(model.backbone(x)), dim=1)[0].numpy()


def test_extract_features_equal_the_models_and_keep_paths_and_cameras(folder, checkpoint, extracted):
    data = np.load(extracted)
    paths, cams, feats = list(data["paths"]), data["cams"], data["features"]
    assert list(data["camera_names"]) == ["gate", "lobby", "yard"]
    expected = sorted((str(folder / cam / name), i) for i, cam in enumerate(FILES) for name in FILES[cam])
    assert sorted(zip(paths, cams.tolist())) == expected, "every image once, camera id by sorted folder name"
    assert feats.shape == (7, 1280) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    naive = np.stack([naive_features(checkpoint[1], p) for p in paths])
    np.testing.assert_allclose(feats, naive, atol=1e-5)


def test_extract_features_reports_a_missing_input(tmp_path):
    args = tool("extract_features").get_parser().parse_args(
        ["--config-file", CONFIG, "--input", str(tmp_path / "nope"), "--output", str(tmp_path / "f.npz"), *OPTS])
    with pytest.raises(UserInputError, match="nope: no such folder or file"):
        tool("extract_features").main(args)


# ---- ranked lists ------------------------------------------------------------------------------

def naive_top(q, g, k, q_paths, g_paths, q_cams, g_cams, q_pids=None, g_pids=None, cross=False):
    out = []
    for i in range(len(q)):
        cand = []
        for j in range(len(g)):
            if q_paths[i] == g_paths[j] or (cross and q_cams[i] == g_cams[j]):
                continue
            if q_pids is not None and q_pids[i] == g_pids[j] and q_cams[i] == g_cams[j]:
                continue
            cand.append((1 - float(np.dot(q[i], g[j])), j))
        out.append([j for _, j in sorted(cand)[:k]])
    return out


@pytest.mark.parametrize("labelled,cross", [(False, False), (True, False), (False, True)])
def test_rank_lists_match_a_naive_ranking(labelled, cross):
    rng = np.random.default_rng(3)
    g = rng.normal(size=(12, 5))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q = g[[0, 4, 7]]  # the queries are gallery images: their own path is left out
    g_paths = [f"g{j}" for j in range(12)]
    q_paths = [g_paths[j] for j in (0, 4, 7)]
    g_cams, g_pids = np.arange(12) % 3, np.arange(12) % 4
    q_cams, q_pids = g_cams[[0, 4, 7]], g_pids[[0, 4, 7]]
    pids = (q_pids, g_pids) if labelled else (None, None)
    ranks = rank_lists(q, g, 5, q_paths, g_paths, q_cams, g_cams, *pids, cross_camera=cross)
    assert ranks.index.tolist() == naive_top(q, g, 5, q_paths, g_paths, q_cams, g_cams, *pids, cross=cross)
    np.testing.assert_allclose(ranks.distance, 1 - np.take_along_axis(q @ g.T, ranks.index, axis=1))
    if labelled:
        assert ranks.match.tolist() == (q_pids[:, None] == g_pids[ranks.index]).tolist()
    else:
        assert ranks.match is None


def test_short_lists_and_cross_camera_needs_cameras():
    f = np.eye(3)
    ranks = rank_lists(f, f, 5, ["a", "b", "c"], ["a", "b", "c"])
    assert ranks.index.shape == (3, 3) and (ranks.index[:, -1] == -1).all()  # own image left out
    with pytest.raises(UserInputError, match="--cross-camera needs the camera"):
        rank_lists(f, f, 2, ["a", "b", "c"], ["a", "b", "c"], np.array([0, -1, 1]), np.array([0, -1, 1]),
                   cross_camera=True)


def test_select_queries_by_ap_and_at_random():
    ap = np.array([0.5, np.nan, 0.1, 0.9, 0.1])
    assert select_queries("worst", 3, 5, ap).tolist() == [2, 4, 0]
    assert select_queries("best", 10, 5, ap).tolist() == [3, 0, 2, 4]
    assert sorted(select_queries("random", 5, 5, seed=1).tolist()) == [0, 1, 2, 3, 4]
    assert select_queries("random", 3, 5, seed=1).tolist() == select_queries("random", 3, 5, seed=1).tolist()
    with pytest.raises(UserInputError, match="needs identities"):
        select_queries("worst", 3, 5, None)


def test_frames_are_green_and_red_with_identities_and_absent_without(folder):
    paths = sorted(str(p) for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))[:3]
    f = np.eye(3)
    labelled = rank_lists(f, f[[1, 0, 2]], 2, ["q0", "q1", "q2"], paths, np.zeros(3), np.ones(3),
                          np.array([1, 2, 3]), np.array([2, 1, 3]))
    # the first column holds the best match, here the same identity for every query
    page = draw_rank_page([0, 1, 2], labelled, paths, paths)
    x0 = 8 + 70 + 16  # MARGIN + query cell + QUERY_GAP: first gallery cell's frame
    y0 = 8 + 22       # MARGIN + TITLE_H
    assert page.getpixel((x0 + 1, y0 + 1)) == MATCH
    assert page.getpixel((x0 + 70 + 4 + 1, y0 + 1)) == MISMATCH
    unlabelled = rank_lists(f, f[[1, 0, 2]], 2, ["q0", "q1", "q2"], paths)
    assert draw_rank_page([0], unlabelled, paths, paths).getpixel((x0 + 1, y0 + 1)) == (255, 255, 255)


def test_visualize_ranks_writes_pages_of_the_expected_size(extracted, tmp_path):
    out = tmp_path / "ranks"
    vis = tool("visualize_ranks")
    vis.main(vis.get_parser().parse_args(["--query", extracted, "--output", str(out), "--topk", "3",
                                          "--num-queries", "5", "--per-page", "2", "--cross-camera"]))
    pages = sorted(os.listdir(out))
    assert pages == ["ranks_001.png", "ranks_002.png", "ranks_003.png"]
    # width: 2 margins of 8 + 4 cells of 64 + 2 * 3 + the query gap 16 + 2 gaps of 4 = 320;
    # height: 2 margins + title 22 + rows of 128 + 2 * 3 + text 28 = 162, with gaps of 4.
    assert Image.open(out / pages[0]).size == (320, 16 + 22 + 2 * 162 + 4)
    assert Image.open(out / pages[2]).size == (320, 16 + 22 + 162)
    side = vis.load_side(extracted, None, {})  # an .npz needs no config or model
    assert sorted(set(side.camera_labels())) == ["gate", "lobby", "yard"], "pages name the cameras"
    with pytest.raises(UserInputError, match="--order worst ranks queries by their AP"):
        vis.main(vis.get_parser().parse_args(["--query", extracted, "--output", str(out), "--order", "worst"]))


def test_query_ap_is_the_evaluators_and_orders_the_queries():
    vis = tool("visualize_ranks")
    g = np.eye(4, dtype=np.float32)
    q = np.array([[1, 0, 0, 0], [0.6, 0.8, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    query = vis.Features(q, ["q0", "q1", "q2"], np.zeros(3, int), np.array([1, 1, 9]))
    gallery = vis.Features(g, ["g0", "g1", "g2", "g3"], np.ones(4, int), np.array([1, 2, 1, 3]))
    ap = vis.query_ap(query, gallery)
    # q0: matches at ranks 1 and 3 (g0 first, then g1 / g2 / g3 tied in gallery order) -> (1 + 2/3) / 2;
    # q1: g1, g0, g2: matches at ranks 2 and 3 -> (1/2 + 2/3) / 2; q2 has no match -> NaN.
    np.testing.assert_allclose(ap[:2], [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3) / 2], rtol=1e-6)
    assert np.isnan(ap[2])
    assert select_queries("worst", 5, 3, ap).tolist() == [1, 0]


def test_visualize_ranks_on_a_labelled_test_set_colours_frames(checkpoint, tmp_path, monkeypatch):
    from dcmip.data.demo import generate_demo_dataset
    import fastreid.data.build as data_build

    generate_demo_dataset(tmp_path / "demo-market", seed=0, num_train_ids=2, num_test_ids=4, num_cams=3,
                          cams_per_id=(2, 3), images_per_cam=(2, 3))
    monkeypatch.setattr(data_build, "_root", str(tmp_path))
    vis = tool("visualize_ranks")
    args = vis.get_parser().parse_args(["--config-file", CONFIG, "--dataset", "DemoMarket", "--output",
                                        str(tmp_path / "out"), "--topk", "2", "--num-queries", "50",
                                        *OPTS, "MODEL.WEIGHTS", checkpoint[0]])
    vis.main(args)
    page = Image.open(tmp_path / "out" / "ranks_001.png").convert("RGB")
    x0, y0 = 8 + 70 + 16, 8 + 22
    assert page.getpixel((x0 + 1, y0 + 1)) in (MATCH, MISMATCH)
    assert page.size[1] == 16 + 22 + 8 * 162 + 7 * 4  # 8 queries on the first page


# ---- ONNX --------------------------------------------------------------------------------------

def test_a_missing_extra_names_it():
    with pytest.raises(MissingExtraError, match=r"pip install -e '\.\[deploy\]'"):
        require("no_such_module_dcmip", "deploy")


def test_export_onnx_matches_pytorch_with_a_dynamic_batch(folder, checkpoint, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    output = str(tmp_path / "model.onnx")
    export = tool("export_onnx")
    diff = export.main(export.get_parser().parse_args(
        ["--config-file", CONFIG, "--output", output, "--images", str(folder), "--num-images", "4", *OPTS,
         "MODEL.WEIGHTS", checkpoint[0]]))
    assert diff <= 1e-4
    session = ort.InferenceSession(output, providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [3, 128, 64] and out.shape[1] == 1280
    # the same numbers as the PyTorch model on an image it was not checked on
    path = str(folder / "yard" / "a" / "b" / "7f3e.png")
    img = Image.open(path).convert("RGB").resize((64, 128), Image.BICUBIC)
    x = np.asarray(img, dtype=np.float32).transpose(2, 0, 1)[None]
    np.testing.assert_allclose(session.run(None, {inp.name: x})[0][0], naive_features(checkpoint[1], path),
                               atol=1e-4)
    printed = capsys.readouterr().out
    assert "channels RGB, values in [0, 255]" in printed and "max |ONNX Runtime - PyTorch|" in printed
