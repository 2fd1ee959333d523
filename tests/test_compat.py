"""The compat layer: every fastreid module we use imports, and its CPU paths run."""
import importlib
from collections import OrderedDict

import numpy as np
import pytest
import torch

import dcmip  # noqa: F401  (applies the patches)

FASTREID_MODULES = [
    "fastreid.config", "fastreid.data", "fastreid.data.build", "fastreid.data.common",
    "fastreid.data.data_utils", "fastreid.data.datasets", "fastreid.data.samplers",
    "fastreid.data.transforms", "fastreid.engine", "fastreid.engine.defaults", "fastreid.engine.hooks",
    "fastreid.engine.launch", "fastreid.engine.train_loop", "fastreid.evaluation",
    "fastreid.evaluation.rank", "fastreid.evaluation.reid_evaluation", "fastreid.evaluation.testing",
    "fastreid.layers", "fastreid.modeling", "fastreid.modeling.backbones", "fastreid.modeling.heads",
    "fastreid.modeling.meta_arch", "fastreid.solver", "fastreid.utils.checkpoint", "fastreid.utils.comm",
    "fastreid.utils.events", "fastreid.utils.logger", "fastreid.utils.registry",
]


@pytest.mark.parametrize("name", FASTREID_MODULES)
def test_fastreid_module_imports(name):
    importlib.import_module(name)


def test_patches_are_the_documented_ones():
    import collections
    import sys

    build = sys.modules["fastreid.data.build"]
    launch = sys.modules["fastreid.engine.launch"]

    assert sys.modules["torch._six"].string_classes == (str, bytes)
    assert collections.Mapping is collections.abc.Mapping
    assert np.bool is np.bool_
    assert build.DataLoaderX is dcmip.compat.data_loader_x
    assert launch._distributed_worker is dcmip.compat.distributed_worker
    from fastreid.evaluation.reid_evaluation import ReidEvaluator
    assert ReidEvaluator._compile_dependencies(None) is None


def test_data_loader_runs_on_cpu(tmp_path):
    from PIL import Image

    from fastreid.data.build import build_reid_test_loader
    from fastreid.data.common import CommDataset
    import torchvision.transforms as T

    items = []
    for i in range(5):
        path = tmp_path / f"{i}.jpg"
        Image.fromarray(np.full((16, 8, 3), i * 40, dtype=np.uint8)).save(path)
        items.append((str(path), i, 0))
    dataset = CommDataset(items, T.Compose([T.PILToTensor()]), relabel=False)
    loader, num_query = build_reid_test_loader(test_set=dataset, test_batch_size=2, num_query=2, num_workers=0)
    batches = list(loader)
    assert [len(b["images"]) for b in batches] == [2, 2, 1]
    assert batches[0]["images"].device.type == "cpu"
    assert batches[2]["images"][0, 0, 0, 0].item() == 160


def test_evaluator_runs_on_cpu_and_ranks_correctly():
    from fastreid.config import get_cfg
    from fastreid.evaluation import ReidEvaluator

    cfg = get_cfg()
    evaluator = ReidEvaluator(cfg, num_query=2)
    evaluator.reset()
    # Two queries (ids 0, 1, camera 0) and a gallery in camera 1 where each query's match is
    # its nearest neighbour, behind ten distractors: mAP and Rank-1 must be 100%.
    g = torch.Generator().manual_seed(0)
    distractors = torch.randn(10, 4, generator=g) * 0.1 + torch.tensor([0.0, 0.0, 1.0, 0.0])
    feats = torch.cat([torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0], [0.9, 0.1, 0, 0], [0.1, 0.9, 0, 0]]),
                       distractors])
    pids = torch.tensor([0, 1, 0, 1] + list(range(2, 12)))
    camids = torch.tensor([0, 0] + [1] * 12)
    evaluator.process({"targets": pids, "camids": camids}, feats)
    results = evaluator.evaluate()
    assert isinstance(results, OrderedDict)
    assert results["Rank-1"] == pytest.approx(100.0)
    assert results["mAP"] == pytest.approx(100.0)


def test_tensorboard_stub_names_the_missing_package():
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed: the real SummaryWriter is used")
    from torch.utils.tensorboard import SummaryWriter

    with pytest.raises(ImportError, match="pip install tensorboard"):
        SummaryWriter("x")


def warnings_shown(message, module):
    """What reaches the user when ``module`` warns ``message``, with dcmip's filters in
    front of "always" (so nothing else hides a warning)."""
    import warnings

    from dcmip.compat import filter_harmless_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_harmless_warnings()
        warnings.warn_explicit(message, UserWarning, "x.py", 1, module=module)
    return [str(w.message) for w in caught]


@pytest.mark.parametrize("message, module", [
    ("TypedStorage is deprecated. It will be removed in the future and UntypedStorage will be the only "
     "storage class.", "fastreid.data.transforms.functional"),
    ("TypedStorage is deprecated. It will be removed in the future.", "fastreid.utils.comm"),
    ("This DataLoader will create 4 worker processes in total. Our suggested max number of worker in "
     "current system is 2", "torch.utils.data.dataloader"),
    ("Cython rank evaluation (very fast so highly recommended) is unavailable, now use python evaluation.",
     "fastreid.evaluation.rank"),
    ("`broadcast_buffers` is deprecated. Use `forward_sync_buffers` instead.", "dcmip.engine.trainer"),
])
def test_harmless_warnings_are_filtered(message, module):
    assert warnings_shown(message, module) == []


@pytest.mark.parametrize("message, module", [
    ("TypedStorage is deprecated. It will be removed in the future.", "my_package.storage"),  # not fastreid's
    ("Some other warning", "fastreid.data.transforms.functional"),
    ("This DataLoader's batch_sampler is odd", "torch.utils.data.dataloader"),
    ("Cython is missing", "fastreid.evaluation.rank"),
])
def test_the_warning_filter_is_narrow(message, module):
    assert warnings_shown(message, module) == [message]


def test_fastreid_to_tensor_warns_nothing():
    import warnings

    from PIL import Image

    from dcmip.compat import filter_harmless_warnings
    from fastreid.data.transforms.functional import to_tensor

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filter_harmless_warnings()
        to_tensor(Image.new("RGB", (4, 8)))
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("name, dropped, kept", [
    ("torch.utils.cpp_extension", "No CUDA runtime is found, using CUDA_HOME='/usr/local'",
     "Error building extension 'x'"),
    ("fastreid.engine.defaults", "Evaluation results for DemoMarket in csv format:", "Prepare testing set"),
])
def test_noise_log_messages_dropped_others_kept(name, dropped, kept):
    import logging

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__()
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    log, handler = logging.getLogger(name), Keep()
    log.addHandler(handler)
    try:
        log.warning(dropped)
        log.warning(kept)
    finally:
        log.removeHandler(handler)
    assert handler.messages == [kept]


def test_fastreid_version_is_the_installed_one():
    import importlib.metadata

    import fastreid

    assert fastreid.__version__ == importlib.metadata.version("fastreid") != "1.3"
