"""DCMIP's two-stage schedule (METHODS §4) inside one run.

Stage 1 (epochs [0, STAGE1_EPOCHS)): discrepant cluster proxies only. Stage 2 (the rest):
starts from stage 1's best checkpoint with a fresh optimiser, keeps an EMA teacher updated
after every step, initialises the multi-instance memory from the teacher's epoch-start
features, evaluates student and teacher and keeps the better by UNSUP.SELECT_METRIC (the
teacher on a tie, as the authors' ``examples/cluster_contrast_train_usl.py``). The stage is
logged, stored in every checkpoint, and a run resumed in either stage continues exactly there.

The teacher's step follows the authors' ``ClusterContrastTrainer_PCLMP.train`` (DCMIP
``clustercontrast/trainers.py``): with UNSUP.DCMIP.TEACHER_BN "forward" the teacher first runs
in training mode on the batch the student saw (its BatchNorm statistics move), then its
parameters take the EMA step after the optimiser step. The forward only touches running
statistics, which the student's update does not read, so running it after the optimiser
step rather than before equals their order.

Under DDP the students, hence the teachers' parameters, are identical on every rank, but
each rank's teacher forward sees its own share of the batch. The teachers' buffers are
broadcast from rank 0 before every use (epoch-start features, evaluation): rank 0 holds the
statistics of the first images of the global batch, the ones the authors' DataParallel keeps.
"""
import copy
import logging
import numbers
import os
import shutil

import torch

from fastreid.utils import comm

from ..modeling.batch_norm import broadcast_buffers_
from ..modeling.ema import ema_update_, teacher_forward_
from .selection import check_select_metric, selection_value
from .trainer import UnsupervisedTrainer

logger = logging.getLogger(__name__)


class TwoStageTrainer(UnsupervisedTrainer):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.stage1_epochs = cfg.UNSUP.DCMIP.STAGE1_EPOCHS
        # The teacher exists from the start so that a checkpoint of either stage loads into
        # the same set of modules; it is only used (and meaningful) in stage 2.
        self.teacher = copy.deepcopy(self.unwrapped_model).eval().requires_grad_(False)
        self.checkpointer.checkpointables["teacher"] = self.teacher
        self.teacher_bn = cfg.UNSUP.DCMIP.TEACHER_BN
        self.select_metric = check_select_metric(cfg)
        self._teacher_input = None
        if self.teacher_bn == "forward":
            # The normalised images the student's backbone receives, already on the device.
            self.unwrapped_model.backbone.register_forward_pre_hook(self._keep_teacher_input)
        self._trainer.after_update.append(self._teacher_step)

    def stage(self, epoch: int) -> int:
        return 1 if epoch < self.stage1_epochs else 2

    def teacher_for_epoch(self):
        return self.teacher if self.stage(self.epoch) == 2 else None

    def _keep_teacher_input(self, backbone, args):
        if backbone.training and self.stage(self.epoch) == 2:
            self._teacher_input = args[0]

    def _teacher_step(self):
        if self.stage(self.epoch) != 2:
            return
        if self.teacher_bn == "forward":
            with torch.autocast("cuda", enabled=self._trainer.amp):
                teacher_forward_(self.teacher, self._teacher_input)
            self._teacher_input = None
        ema_update_(self.teacher, self.unwrapped_model, self.cfg.UNSUP.DCMIP.EMA_MOMENTUM,
                    buffers=self.teacher_bn == "ema")

    def _sync_teacher_buffers(self):
        """Every rank's teacher takes rank 0's buffers (see the module docstring)."""
        for part in (self.teacher.backbone, self.teacher.heads):
            broadcast_buffers_(part)

    def before_epoch(self):
        if self.epoch == self.stage1_epochs and self.epoch > 0:
            self._start_stage2()
        if self.stage(self.epoch) == 2:
            self._sync_teacher_buffers()
        self.storage.put_scalar("stage", self.stage(self.epoch), smoothing_hint=False)
        logger.info(f"epoch {self.epoch}: DCMIP stage {self.stage(self.epoch)}")
        super().before_epoch()

    def _start_stage2(self):
        comm.synchronize()  # the main process has written stage 1's checkpoints
        if not self.cfg.DATASETS.TESTS:
            # Nothing was evaluated, so stage 1 has no best: stage 2 goes on from its last
            # weights, the model in memory (after a resume, model_last's).
            self.teacher.load_state_dict(self.unwrapped_model.state_dict())
            self.optimizer.state.clear()
            logger.info(f"epoch {self.epoch}: DCMIP stage 2 begins from stage 1's last model (no test set, so "
                        f"no stage-1 best); EMA teacher initialised from it")
            return
        best = os.path.join(self.cfg.OUTPUT_DIR, "model_best.pth")
        if not os.path.isfile(best):
            raise RuntimeError(f"epoch {self.epoch}: stage 2 starts from stage 1's best checkpoint, but "
                               f"{best} does not exist; stage 1 must evaluate at least once "
                               f"(TEST.EVAL_PERIOD <= UNSUP.DCMIP.STAGE1_EPOCHS).")
        if comm.is_main_process():
            shutil.copyfile(best, os.path.join(self.cfg.OUTPUT_DIR, "model_stage1_best.pth"))
        comm.synchronize()
        state = torch.load(best, map_location="cpu", weights_only=False)["model"]
        # Written by this run's own model: every key must match.
        self.unwrapped_model.load_state_dict(state)
        self.teacher.load_state_dict(state)
        self.optimizer.state.clear()
        logger.info(f"epoch {self.epoch}: DCMIP stage 2 begins from {best} (stage-1 best metric "
                    f"{self.best_metric:.2f}); EMA teacher initialised from it")

    def evaluate(self):
        student = super().evaluate()
        self.best_network = "student"
        if self.stage(self.epoch) == 1:
            return student
        self._sync_teacher_buffers()
        teacher = self.test(self.cfg, self.teacher)  # every rank embeds its shard
        if not comm.is_main_process():
            return student
        key = self.select_metric
        student_value, teacher_value = selection_value(student, key), selection_value(teacher, key)
        self.best_network = "teacher" if teacher_value >= student_value else "student"
        logger.info(f"epoch {self.epoch}: student {key} {student_value:.2f}, teacher {key} {teacher_value:.2f} "
                    f"(UNSUP.SELECT_METRIC; the {self.best_network} is the candidate for model_best)")
        # Both networks under their own keys: the plain keys hold the model_best candidate,
        # which is the teacher at some evaluations and the student at others.
        self.storage.put_scalars(**{f"{name}/{k}": float(v) for name, results in (("student", student),
                                                                                   ("teacher", teacher))
                                    for k, v in results.items() if isinstance(v, numbers.Real)},
                                 smoothing_hint=False)
        self._last_eval_results = teacher if self.best_network == "teacher" else student
        return self._last_eval_results

    def best_state_dict(self):
        return (self.teacher if getattr(self, "best_network", "student") == "teacher"
                else self.unwrapped_model).state_dict()

    def checkpoint_state(self):
        return {**super().checkpoint_state(), "stage": self.stage(self.epoch)}
