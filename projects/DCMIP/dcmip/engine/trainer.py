"""The unsupervised trainer: fastreid's DefaultTrainer with a per-epoch clustering step."""
import logging
import numbers
import os
import random
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

import fastreid.data.build as data_build
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.engine import hooks
from fastreid.engine.defaults import DefaultTrainer
from fastreid.engine.train_loop import HookBase, TrainerBase
from fastreid.modeling import build_model as build_reid_model
from fastreid.solver import build_optimizer
from fastreid.utils import comm
from fastreid.utils.events import get_event_storage
from fastreid.utils.logger import setup_logger

from ..compat import tensorboard_available
from ..data.checks import check_images
from ..evaluation.evaluator import BlockedReidEvaluator, check_evaluator_config
from ..modeling.batch_norm import broadcast_buffers_, convert_group_batchnorm
from ..registry import TrainingStopped, lookup
from .checkpoint import AtomicCheckpointer, checkpoint_metadata
from ..timing import timed
from .events import EpochJSONWriter, EpochMetricPrinter, EpochTensorboardWriter
from .hooks import ClusteringHook, StageLRScheduler
from .profile import EpochProfileHook
from .selection import check_select_metric, selection_value
from .visualization import CurvesHook, MontageHook

logger = logging.getLogger(__name__)


def load_train_items(cfg) -> List[Tuple[str, object, int]]:
    """(path, identity, camera) of every train image of cfg.DATASETS.NAMES. Identities are
    only used for pseudo-label statistics."""
    items = []
    for name in cfg.DATASETS.NAMES:
        dataset_cls = lookup(DATASET_REGISTRY, name, "DATASETS.NAMES")
        # Datasets that read config keys (CameraFolders) declare them; fastreid passes root only.
        kwargs = dataset_cls.config_kwargs(cfg) if hasattr(dataset_cls, "config_kwargs") else {}
        dataset = dataset_cls(root=data_build._root, **kwargs)
        if comm.is_main_process():
            dataset.show_train()
        items.extend(dataset.train)
    return check_images(items, cfg.UNSUP.CORRUPT_IMAGES)


def train_has_identities(cfg) -> bool:
    """Whether every train dataset has true identities to score pseudo labels against (NMI /
    ARI); unlabelled ones (CameraFolders) declare ``has_identities = False``."""
    return all(getattr(lookup(DATASET_REGISTRY, name, "DATASETS.NAMES"), "has_identities", True)
               for name in cfg.DATASETS.NAMES)


class StepRunner:
    """One training step (METHODS §1 step 4): losses against the memory as it was, backward,
    optimiser step, then the memory update; optional mixed precision on CUDA.

    Losses are read back to the host only every ``log_period`` steps, so the step itself
    never waits for the device.
    """

    def __init__(self, model, optimizer, amp: bool, iters_per_epoch: int, log_period: int = 20):
        self.model = model
        self.iters_per_epoch = iters_per_epoch
        self.optimizer = optimizer
        self.data_loader = None
        self._data_loader_iter = None
        self.amp = amp and torch.cuda.is_available()
        self.grad_scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.after_update = []  # callables run after the memory update (e.g. the EMA teacher)
        self.iter = 0
        # Reading a loss back synchronises with the device: on a GPU, losses are summed on the
        # device and their window mean is logged every log_period steps. A CPU has nothing
        # to wait for, so it logs every step.
        self.log_period = log_period if next(model.parameters()).is_cuda else 1
        self._loss_sums, self._data_time = None, 0.0

    def set_data_loader(self, loader):
        shutdown = getattr(self.data_loader, "shutdown", None)
        if shutdown is not None:
            shutdown()
        self.data_loader = loader
        self._data_loader_iter = iter(loader)

    def run_step(self):
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        self._data_time += time.perf_counter() - start
        with torch.autocast("cuda", enabled=self.amp):
            loss_dict = self.model(data)
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad(set_to_none=True)
        if self.amp:
            self.grad_scaler.scale(losses).backward()
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            losses.backward()
            self.optimizer.step()
        unwrap(self.model).update_memory()
        for callback in self.after_update:
            callback()
        step_losses = torch.stack([v.detach().float() for v in loss_dict.values()])
        self._loss_sums = step_losses if self._loss_sums is None else self._loss_sums + step_losses
        if (self.iter + 1) % self.log_period == 0:
            self._write_metrics(dict(zip(loss_dict, (self._loss_sums / self.log_period).tolist())),
                                self._data_time / self.log_period)
            self._loss_sums, self._data_time = None, 0.0

    def _write_metrics(self, metrics: Dict[str, float], data_time: float):
        total = sum(metrics.values())
        if not np.isfinite(total):
            raise DivergedError(f"epoch {self.iter // self.iters_per_epoch}, iteration {self.iter}: the loss "
                                f"became {total} ({metrics}). Lower SOLVER.BASE_LR, or resume from an "
                                f"earlier checkpoint (--resume restarts from model_last).")
        all_metrics = comm.gather(metrics)
        if comm.is_main_process():
            storage = get_event_storage()
            storage.put_scalar("data_time", data_time)
            averaged = {k: float(np.mean([m[k] for m in all_metrics])) for k in metrics}
            storage.put_scalar("total_loss", sum(averaged.values()))
            storage.put_scalars(**averaged)


class DivergedError(TrainingStopped, FloatingPointError):
    """A non-finite training loss."""


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


class UnsupervisedTrainer(DefaultTrainer):
    """fastreid's DefaultTrainer, except that the training set is re-labelled by clustering
    before every epoch (:class:`ClusteringHook`) and the memory head is updated after every
    step. Epoch length is UNSUP.ITERS."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("fastreid").isEnabledFor(logging.INFO):
            setup_logger()
        self.cfg = cfg
        self.train_items = load_train_items(cfg)
        model = self.build_model(cfg)
        optimizer, _ = self.build_optimizer(cfg, model)
        if comm.get_world_size() > 1:
            on_cuda = next(model.parameters()).is_cuda
            model = DistributedDataParallel(model, device_ids=[comm.get_local_rank()] if on_cuda else None,
                                            broadcast_buffers=False)
        self._trainer = StepRunner(model, optimizer, cfg.SOLVER.AMP.ENABLED, cfg.UNSUP.ITERS)
        self.iters_per_epoch = cfg.UNSUP.ITERS
        self.start_epoch = 0
        self.max_epoch = cfg.SOLVER.MAX_EPOCH
        self.max_iter = self.max_epoch * self.iters_per_epoch
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, metadata=checkpoint_metadata(cfg),
                                               save_to_disk=comm.is_main_process(), optimizer=optimizer)
        self.best_metric = -1.0
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        # UNSUP.BN_GROUP_SIZE: BatchNorm statistics per group of images, as the authors'
        # DataParallel computes them (dcmip.modeling.batch_norm); training only.
        # fastreid's build_model, which DefaultTrainer's wraps with a ~300-line print of the model.
        model = build_reid_model(cfg)
        for part in ("backbone", "heads"):
            setattr(model, part, convert_group_batchnorm(getattr(model, part), cfg.UNSUP.BN_GROUP_SIZE))
        logger.info(f"model: {cfg.MODEL.BACKBONE.NAME} {cfg.MODEL.BACKBONE.DEPTH} at {tuple(cfg.INPUT.SIZE_TRAIN)}, "
                    f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, memory head "
                    f"{cfg.UNSUP.MEMORY.NAME}, on {cfg.MODEL.DEVICE}")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        # fastreid's default flattens the parameters into one buffer (ContiguousParams), which
        # silently stops training once torch 2's zero_grad sets gradients to None.
        return build_optimizer(cfg, model, contiguous=False)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        # DefaultTrainer.test (training evaluations and --eval-only) builds its evaluator here.
        # UNSUP.EVALUATOR blocked: exact ranking without the full distance matrix (fastreid's
        # pure-Python path takes minutes on MSMT17-sized test sets).
        check_evaluator_config(cfg)
        if cfg.UNSUP.EVALUATOR == "fastreid":
            return super().build_evaluator(cfg, dataset_name, output_dir)
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, BlockedReidEvaluator(cfg, num_query, output_dir)

    @property
    def unwrapped_model(self):
        return unwrap(self.model)

    def set_data_loader(self, loader):
        self._trainer.set_data_loader(loader)

    def teacher_for_epoch(self) -> Optional[torch.nn.Module]:
        """The model whose features initialise teacher-based memories this epoch (None here)."""
        return None

    def run_step(self):
        self._trainer.iter = self.iter
        self._trainer.run_step()

    def build_hooks(self):
        cfg = self.cfg
        ret = [
            # fastreid's default skips 3 steps, leaving no timing (and its printer dividing by
            # zero) when a resumed run's first write comes sooner.
            hooks.IterationTimer(warmup_iter=1),
            StageLRScheduler(cfg, self.optimizer),
            ClusteringHook(cfg, self.train_items, label_stats=train_has_identities(cfg)),
        ]
        if cfg.UNSUP.VIS.MONTAGE and comm.is_main_process():
            ret.append(MontageHook(cfg, ret[-1], tensorboard_available()))
        if cfg.DATASETS.TESTS:
            ret.append(EpochEvalHook(cfg.TEST.EVAL_PERIOD, self.evaluate, check_select_metric(cfg)))
        elif comm.is_main_process():
            logger.info("no test set (DATASETS.TESTS is empty): no evaluation, no model_best; "
                        "use model_final.pth (model_last.pth while training)")
        ret.append(EpochCheckpointer(cfg.SOLVER.CHECKPOINT_PERIOD))
        ret.append(EpochProfileHook())  # after the timed hooks, before the writers
        if comm.is_main_process():
            ret.append(hooks.PeriodicWriter(self.build_writers(), 20))
            ret.append(CurvesHook(cfg))
        return ret

    def build_writers(self):
        writers = [EpochMetricPrinter(self.max_iter),
                   EpochJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))]
        if tensorboard_available():
            writers.append(EpochTensorboardWriter(self.cfg.OUTPUT_DIR))
        else:
            logger.info("no TensorBoard events: tensorboard is not installed (pip install tensorboard)")
        return writers

    def train(self):
        """Train to SOLVER.MAX_EPOCH; the last evaluation's results on the main process, None
        without a test set (fastreid's asserts that there was one)."""
        TrainerBase.train(self, self.start_epoch, self.max_epoch, self.iters_per_epoch)
        return getattr(self, "_last_eval_results", None) if comm.is_main_process() else None

    def before_epoch(self):
        self._sync_student_buffers()  # the epoch-start features come next
        super().before_epoch()

    def evaluate(self):
        self._sync_student_buffers()
        self._last_eval_results = self.test(self.cfg, self.unwrapped_model)
        return self._last_eval_results

    def _sync_student_buffers(self):
        """Before the student runs in eval mode, every rank takes rank 0's BatchNorm running
        statistics, so every shard is embedded by the same model (a no-op in one process)."""
        for part in (self.unwrapped_model.backbone, self.unwrapped_model.heads):
            broadcast_buffers_(part)

    def resume_or_load(self, resume=True):
        checkpoint = self.checkpointer.resume_or_load(self.cfg.MODEL.WEIGHTS, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_epoch = checkpoint.get("epoch", -1) + 1
            self.best_metric = checkpoint.get("best_metric", -1.0)
            if "rng" in checkpoint:
                set_rng_state(checkpoint["rng"])
        return checkpoint

    def best_state_dict(self) -> Dict:
        """Weights saved as ``model_best`` when the evaluated metric improves."""
        return self.unwrapped_model.state_dict()

    def checkpoint_state(self) -> Dict:
        """Extra state saved with every checkpoint, restored by :meth:`resume_or_load`."""
        return {"epoch": self.epoch, "best_metric": self.best_metric, "rng": get_rng_state()}


class EpochEvalHook(HookBase):
    """Evaluates every TEST.EVAL_PERIOD epochs and after the last one, inside ``after_epoch``
    so that the checkpointer that follows sees this epoch's value of the selection metric
    (UNSUP.SELECT_METRIC, :mod:`dcmip.engine.selection`)."""

    def __init__(self, period: int, evaluate, select_metric: str = "mAP"):
        self.period = period
        self.evaluate = evaluate
        self.select_metric = select_metric

    def after_epoch(self):
        epoch = self.trainer.epoch
        if (self.period > 0 and (epoch + 1) % self.period == 0) or epoch + 1 == self.trainer.max_epoch:
            with timed("evaluation"):
                results = self.evaluate()
            # fastreid's evaluator returns the metrics on the main process only.
            if comm.is_main_process():
                value = selection_value(results, self.select_metric)
                self.trainer.last_eval = (epoch, value)
                logger.info(f"epoch {epoch}: model selection by {self.select_metric} (UNSUP.SELECT_METRIC): "
                            f"{value:.2f}, best before {max(self.trainer.best_metric, 0.0):.2f}")
                # numbers.Real: fastreid's Rank-k are numpy float32, which are not floats.
                self.trainer.storage.put_scalars(**{k: float(v) for k, v in results.items()
                                                    if isinstance(v, numbers.Real)}, smoothing_hint=False)
            comm.synchronize()


class EpochCheckpointer(HookBase):
    """After every SOLVER.CHECKPOINT_PERIOD epochs: ``model_last`` (what --resume picks up)
    and, when this epoch was evaluated and beat the best so far, ``model_best``; ``model_final``
    at the end. Unlike fastreid's, it keeps one rolling checkpoint rather than one per epoch,
    and carries the best metric across resumes."""

    def __init__(self, period: int):
        self.period = period

    def after_epoch(self):
        with timed("checkpoint"):
            self._save(self.trainer, self.trainer.epoch)

    def _save(self, trainer, epoch):
        evaluated_epoch, metric = getattr(trainer, "last_eval", (None, None))
        improved = evaluated_epoch == epoch and metric > trainer.best_metric
        if improved:
            trainer.best_metric = metric
        state = trainer.checkpoint_state()
        if improved:
            trainer.checkpointer.save("model_best", model_state=trainer.best_state_dict(), metric=metric, **state)
        if (epoch + 1) % self.period == 0 or epoch + 1 == trainer.max_epoch:
            trainer.checkpointer.save("model_last", **state)
        if epoch + 1 == trainer.max_epoch:
            trainer.checkpointer.save("model_final", **state)


def get_rng_state() -> Dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: Dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
