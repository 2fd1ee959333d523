"""Config set-up and the train / eval entry point behind ``tools/train_net.py``."""
import argparse
import logging
import os

import torch

from fastreid.config import get_cfg
from fastreid.engine import default_setup
from fastreid.utils import comm
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
    default_setup(cfg, args)
    # fastreid's set-up only configures its own logger; ours writes to the same log.txt.
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="dcmip", abbrev_name="dcmip")
    seed_all_rng(cfg.UNSUP.SEED)
    return cfg


def load_cfg(args):
    """The merged and checked config, without fastreid's run set-up (logging, output dir)."""
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
    return cfg


def setup_tool_cfg(config_file: str, opts):
    """The checked, frozen config of a tool that runs a trained model (extract_features,
    visualize_ranks, export_onnx): checked like ``--eval-only``, logging to the console only."""
    cfg = load_cfg(argparse.Namespace(config_file=config_file, opts=list(opts), eval_only=True))
    cfg.freeze()
    setup_logger(name="fastreid")
    setup_logger(name="dcmip", abbrev_name="dcmip")
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
    check_evaluator_config(cfg)
    check_select_metric(cfg)
    try:
        check_group_size(cfg.UNSUP.BN_GROUP_SIZE, cfg.SOLVER.IMS_PER_BATCH, comm.get_world_size())
    except ValueError as e:
        raise UserInputError(str(e)) from None
    for key, value, choices in (("UNSUP.WARMUP_STEP", cfg.UNSUP.WARMUP_STEP, WARMUP_STEPS),
                                ("UNSUP.DCMIP.TEACHER_BN", cfg.UNSUP.DCMIP.TEACHER_BN, TEACHER_BN)):
        if value not in choices:
            raise UserInputError(f"{key} {value!r}: choose one of {', '.join(choices)} (dcmip/config.py).")
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(
            f"MODEL.DEVICE is {cfg.MODEL.DEVICE!r} but no GPU is visible to torch. Run on a GPU machine, "
            f"or pass MODEL.DEVICE cpu (the *_cpu.yml configs are sized for a CPU).")
    if eval_only and not cfg.MODEL.WEIGHTS:
        logger.warning("no MODEL.WEIGHTS: using the initial (ImageNet) weights.")
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
