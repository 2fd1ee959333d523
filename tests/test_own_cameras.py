"""The own-cameras path end to end, as a user without labels takes it: the demo data with every
label stripped (camera folders, random file names at random depths), two short epochs
without a test set, the cluster montages, features of the folder, an ONNX export checked
against PyTorch with ONNX Runtime, and a ranked list. Each step is the user's command."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from test_train_e2e import ROOT, run, workspace  # noqa: F401  (the fixture)

O2CAP = os.path.join(ROOT, "configs", "O2CAP", "demo_cpu.yml")


def _tool(name, args, root):
    env = dict(os.environ, FASTREID_DATASETS=str(root / "datasets"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def cameras(workspace):  # noqa: F811
    """datasets/my_cameras/<camera name>/<random folders>/<random name>.jpg from the demo train set."""
    root, _ = workspace
    rng = np.random.default_rng(0)
    src = root / "datasets" / "demo-market" / "bounding_box_train"
    dst = root / "datasets" / "my_cameras"
    names = {1: "entrance", 2: "lobby", 3: "yard", 4: "garage", 5: "exit", 6: "stairs"}
    for path in sorted(src.glob("*.jpg")):
        cam = int(path.name.split("_c")[1][0])  # the demo's Market names: PPPP_cCsS_...
        folder = dst / names[cam] / f"{rng.integers(10**6):06d}"[: rng.integers(1, 4)]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"{rng.integers(10**12):012x}.jpg")
    return dst


@pytest.fixture(scope="module")
def trained(workspace, cameras):  # noqa: F811
    root, weights = workspace
    out = root / "own_cameras"
    proc = run(["--config-file", O2CAP, "DATASETS.NAMES", '("CameraFolders",)', "DATASETS.TESTS", "()",
                "UNSUP.DATA.CAMERA_FOLDERS", str(cameras), "MODEL.BACKBONE.PRETRAIN_PATH", weights,
                "OUTPUT_DIR", str(out), "SOLVER.MAX_EPOCH", "2", "UNSUP.ITERS", "3", "SOLVER.IMS_PER_BATCH", "16",
                "SOLVER.WARMUP_ITERS", "0", "DATALOADER.NUM_WORKERS", "0", "UNSUP.VIS.MONTAGE", "True"], root)
    return root, out, proc.stdout + proc.stderr


def test_trains_on_unlabelled_camera_folders_without_a_test_set(trained):
    _, out, log = trained
    assert "entrance" in log and "stairs" in log  # the logged camera mapping
    assert "nmi" not in log  # no identities: no pseudo-label scores
    assert (out / "model_final.pth").is_file() and not (out / "model_best.pth").exists()
    for epoch in (0, 1):
        montage = Image.open(out / "montages" / f"epoch_{epoch:03d}.png")
        assert montage.width >= 800 and montage.height >= 200


def test_features_onnx_and_ranked_list_from_the_trained_model(trained, cameras):
    root, out, _ = trained
    weights = ["MODEL.WEIGHTS", str(out / "model_final.pth")]
    config = str(out / "config.yaml")
    feats = root / "own_feats.npz"
    _tool("extract_features.py", ["--config-file", config, "--input", str(cameras), "--output", str(feats),
                                  *weights], root)
    saved = np.load(feats, allow_pickle=True)
    num_images = len(list(cameras.rglob("*.jpg")))
    assert saved["features"].shape[0] == num_images == len(saved["paths"])
    np.testing.assert_allclose(np.linalg.norm(saved["features"], axis=1), 1.0, atol=1e-5)

    log = _tool("export_onnx.py", ["--config-file", config, "--output", str(root / "own.onnx"), *weights], root)
    assert (root / "own.onnx").is_file() and "ONNX Runtime" in log

    _tool("visualize_ranks.py", ["--query", str(feats), "--cross-camera", "--output", str(root / "own_ranks"),
                                 "--num-queries", "4"], root)
    pages = sorted((root / "own_ranks").glob("*.png"))
    assert pages and Image.open(pages[0]).width >= 400
