"""Config set-up and the train / eval entry point behind ``tools/train_net.py``."""
import argparse
import logging
import os
from typing import List, Optional

import torch

from fastreid.config import get_cfg
from fastreid.utils import comm
from fastreid.utils.collect_env import collect_env_info
from fastreid.utils.env import seed_all_rng
from fastreid.utils.logger import setup_logger

from fastreid.data.datasets import DATASET_REGISTRY

from ..config import add_dcmip_config
from ..evaluation.evaluator import check_evaluator_config
from ..memory import MEMORY_HEAD_REGISTRY, uses_dcmip
from ..memory.composite import check_memory_config
from ..modeling.batch_norm import check_group_size
from ..modeling.ema import TEACHER_BN
from ..registry import UserInputError, lookup
from ..sampling import SAMPLER_REGISTRY
from ..weights import fastreid_imagenet_url, fetch_imagenet_weights
from .allocator import apply_allocator_config
from .inference import load_model
from .schedule import WARMUP_STEPS
from .selection import check_select_metric
from .trainer import UnsupervisedTrainer
from .two_stage import TwoStageTrainer

logger = logging.getLogger(__name__)


def setup_cfg(args):
    """fastreid config + the UNSUP node, merged with the YAML file and command-line overrides,
    checked for problems a user can fix before anything expensive starts."""
    cfg = load_cfg(args)
    cfg.freeze()
    setup_run(cfg, args)
    return cfg


def setup_run(cfg, args) -> None:
    """fastreid's ``default_setup``, saying each fact once: fastreid's and dcmip's loggers
    to the console and OUTPUT_DIR/log.txt; the environment table; the command line; the
    config as the keys that differ from the defaults (fastreid printed the YAML file and then
    all ~250 keys), saved whole to OUTPUT_DIR/config.yaml; and the seed actually used,
    UNSUP.SEED (fastreid's set-up seeds from the clock and logs that seed, which the run then
    replaced)."""
    rank, output_dir = comm.get_rank(), cfg.OUTPUT_DIR
    if comm.is_main_process():
        os.makedirs(output_dir, exist_ok=True)
    setup_logger(output_dir, distributed_rank=rank)
    setup_logger(output_dir, distributed_rank=rank, name="dcmip", abbrev_name="dcmip")
    if comm.get_world_size() > 1:
        logger.info(f"process {rank} of {comm.get_world_size()}")
    # The table; torch's build flags that follow it are for torch bug reports.
    logger.info("environment:\n" + collect_env_info().split("PyTorch built with")[0].rstrip())
    logger.info(f"command line: {args}")
    path = os.path.join(output_dir, "config.yaml")
    if comm.is_main_process():
        with open(path, "w") as f:
            f.write(cfg.dump())
    logger.info(f"config {args.config_file or '(defaults)'} with overrides {args.opts or 'none'}, saved to "
                f"{path}; differs from the defaults (dcmip/config.py, fastreid's config/defaults.py) in:\n  "
                + "\n  ".join(config_changes(cfg)))
    seed_all_rng(cfg.UNSUP.SEED)
    logger.info(f"seed {cfg.UNSUP.SEED} (UNSUP.SEED)")
    apply_allocator_config(cfg)
    if not args.eval_only:
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def config_changes(cfg) -> List[str]:
    """``KEY: value`` of every key whose value differs from the default config."""
    def flat(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    defaults = dict(flat(add_dcmip_config(get_cfg())))
    return [f"{key}: {value}" for key, value in flat(cfg) if defaults.get(key) != value]


def load_cfg(args, needs_test_set: Optional[bool] = None):
    """The merged and checked config, without fastreid's run set-up (logging, output dir).
    ``needs_test_set`` (default: ``args.eval_only``): the run evaluates on DATASETS.TESTS."""
    cfg = get_cfg()
    add_dcmip_config(cfg)
    if args.config_file and not os.path.isfile(args.config_file):
        raise UserInputError(f"--config-file {args.config_file}: no such file (configs live in configs/).")
    try:
        if args.config_file:
            cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
    except (KeyError, AssertionError, ValueError) as e:
        # yacs names the offending key or value in its message.
        raise UserInputError(f"config: {e}. Plugin keys are declared in dcmip/config.py, the others "
                             f"in fastreid's config/defaults.py.") from None
    check_cfg(cfg, eval_only=args.eval_only)
    if (args.eval_only if needs_test_set is None else needs_test_set) and not cfg.DATASETS.TESTS:
        raise UserInputError("--eval-only: DATASETS.TESTS is empty, so there is nothing to evaluate on. Name a "
                             "labelled test set (e.g. DATASETS.TESTS '(\"DemoMarket\",)'), or embed your own "
                             "images with tools/extract_features.py.")
    return cfg


def setup_tool_cfg(config_file: str, opts):
    """The checked, frozen config of a tool that runs a trained model (extract_features,
    visualize_ranks, export_onnx): checked like ``--eval-only``, logging to the console only."""
    cfg = load_cfg(argparse.Namespace(config_file=config_file, opts=list(opts), eval_only=True),
                   needs_test_set=False)
    cfg.freeze()
    setup_logger(name="fastreid")
    setup_logger(name="dcmip", abbrev_name="dcmip")
    apply_allocator_config(cfg)
    return cfg


def check_cfg(cfg, eval_only: bool = False) -> None:
    """Raise :class:`UserInputError` for problems the user can fix, before anything runs.
    An empty MODEL.BACKBONE.PRETRAIN_PATH is resolved to the file fastreid would download
    (fetched into its cache when missing, :func:`dcmip.weights.fetch_imagenet_weights`)."""
    lookup(MEMORY_HEAD_REGISTRY, cfg.UNSUP.MEMORY.NAME, "UNSUP.MEMORY.NAME")
    lookup(SAMPLER_REGISTRY, cfg.UNSUP.SAMPLER.NAME, "UNSUP.SAMPLER.NAME")
    if not eval_only:
        check_memory_config(cfg, {name: cls.GROUPS for name, cls in SAMPLER_REGISTRY._obj_map.items()})
    for name in cfg.DATASETS.NAMES:
        lookup(DATASET_REGISTRY, name, "DATASETS.NAMES")
    for name in cfg.DATASETS.TESTS:
        if not getattr(lookup(DATASET_REGISTRY, name, "DATASETS.TESTS"), "has_identities", True):
            raise UserInputError(
                f"DATASETS.TESTS: {name} has no identities, so there is no query / gallery to evaluate. "
                f"Name a labelled Market-layout test set there (e.g. DemoMarket), or leave it empty.")
    check_select_metric(cfg)
    try:
        check_group_size(cfg.UNSUP.BN_GROUP_SIZE, cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())
    except ValueError as e:
        raise UserInputError(str(e)) from None
    for key, value, choices in (("UNSUP.WARMUP_STEP", cfg.UNSUP.WARMUP_STEP, WARMUP_STEPS),
                                ("UNSUP.DCMIP.TEACHER_BN", cfg.UNSUP.DCMIP.TEACHER_BN, TEACHER_BN)):
        if value not in choices:
            raise UserInputError(f"{key} {value!r}: choose one of {', '.join(choices)} (dcmip/config.py).")
    check_evaluator_config(cfg)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no GPU is visible to torch. Run on a GPU machine, "
            f"or pass MODEL.DEVICE cpu (the *_cpu.yml configs are sized for a CPU).")
    if eval_only and cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise UserInputError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS}: no such checkpoint. Training writes "
                                f"model_best.pth / model_final.pth into OUTPUT_DIR.")
    if cfg.MODEL.BACKBONE.PRETRAIN and not (eval_only and cfg.MODEL.WEIGHTS):
        path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
        url = fastreid_imagenet_url(cfg.MODEL.BACKBONE)
        if not path and url:
            # fastreid's behaviour: its ImageNet file, from its cache or downloaded into it; the
            # config then names the file (and OUTPUT_DIR/config.yaml records it).
            cfg.MODEL.BACKBONE.PRETRAIN_PATH = fetch_imagenet_weights(url)
        elif not path or not os.path.isfile(path):
            hint = ("run `make weights` (python tools/prepare_weights.py) to prepare it"
                    if "mobilenet" in cfg.MODEL.BACKBONE.NAME else
                    "place the ImageNet weights of the backbone there (for ResNet-50, torchvision's "
                    "resnet50-0676ba61.pth)")
            if url:
                hint += f", set it to '' to download fastreid's {url}"
            raise UserInputError(
                f"MODEL.BACKBONE.PRETRAIN_PATH {path!r}: no such file; {hint}, set "
                f"MODEL.BACKBONE.PRETRAIN_PATH to the file, or train from scratch with "
                f"MODEL.BACKBONE.PRETRAIN False.")


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        return UnsupervisedTrainer.test(cfg, load_model(cfg))
    trainer = build_trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def build_trainer(cfg) -> UnsupervisedTrainer:
    """DCMIP's two-stage trainer when the config trains DCMIP's head (alone or in a composite)
    and has a stage 2, the one-stage trainer otherwise."""
    two_stage = uses_dcmip(cfg) and cfg.UNSUP.DCMIP.STAGE1_EPOCHS < cfg.SOLVER.MAX_EPOCH
    return (TwoStageTrainer if two_stage else UnsupervisedTrainer)(cfg)
