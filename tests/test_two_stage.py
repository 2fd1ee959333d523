"""DCMIP's two stages in a running trainer (tiny demo data, 2 steps per epoch, stage 1 = epochs
0-1, stage 2 = epochs 2-3, BatchNorm in groups of 8 of the 16 images): stage 2 starts from the best stage-1 weights, not the last; the EMA
teacher moves every step (parameters by the EMA formula, BatchNorm statistics by its own
forward); the instance memory is drawn from the teacher's epoch-start features; model
selection follows UNSUP.SELECT_METRIC."""
import argparse
import os

import pytest
import torch

import dcmip  # noqa: F401  (fastreid compatibility patches first)
from fastreid.engine.train_loop import HookBase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "DCMIP", "demo_cpu.yml")

# Selection values the patched evaluation returns, in call order: epoch 0 beats epoch 1, so
# stage 2 must start from epoch 0's weights; in stage 2 the student and then the teacher.
RESULTS = [{"mAP": 50.0, "Rank-1": 10.0}, {"mAP": 10.0, "Rank-1": 90.0},
           {"mAP": 5.0, "Rank-1": 1.0}, {"mAP": 5.0, "Rank-1": 0.0},
           {"mAP": 1.0, "Rank-1": 1.0}, {"mAP": 60.0, "Rank-1": 1.0}]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    from dcmip.data.demo import generate_demo_dataset
    from dcmip.weights import prepare_mobilenetv2_weights

    root = tmp_path_factory.mktemp("two_stage")
    generate_demo_dataset(root / "datasets" / "demo-market", seed=0, num_train_ids=16, num_test_ids=4)
    return root, prepare_mobilenetv2_weights(str(root / "mobilenetv2.pth"))


def build_trainer(root, weights, monkeypatch, *opts):
    import fastreid.data.build as data_build

    from dcmip.engine.defaults import build_trainer as build, load_cfg

    monkeypatch.setattr(data_build, "_root", str(root / "datasets"))
    os.makedirs(root / "out", exist_ok=True)
    args = argparse.Namespace(config_file=CONFIG, eval_only=False, opts=[
        "MODEL.BACKBONE.PRETRAIN_PATH", weights, "OUTPUT_DIR", str(root / "out"), "SOLVER.MAX_EPOCH", "4",
        "UNSUP.DCMIP.STAGE1_EPOCHS", "2", "UNSUP.ITERS", "2", "SOLVER.IMS_PER_BATCH", "16",
        "UNSUP.SAMPLER.NUM_INSTANCES", "4", "TEST.EVAL_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0",
        "UNSUP.DCMIP.EMA_MOMENTUM", "0.9", "UNSUP.BN_GROUP_SIZE", "8",
        "INPUT.SIZE_TRAIN", "[64, 32]", "INPUT.SIZE_TEST", "[64, 32]", "INPUT.PADDING.SIZE", "2", *opts])
    cfg = load_cfg(args)
    cfg.freeze()
    return build(cfg)


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class Recorder(HookBase):
    """Student and teacher states at the moments the checks need, and the epoch-start
    features each network produced (through the clustering hook's extract_many)."""

    def __init__(self):
        self.after_epoch_student, self.stage2_start, self.steps, self.instances = {}, {}, [], {}

    def before_epoch(self):
        t = self.trainer
        if t.epoch >= 2:
            # Runs after the clustering hook: the memory of this epoch is built.
            self.stage2_start.setdefault(t.epoch, (snapshot(t.unwrapped_model), snapshot(t.teacher)))
            self.instances[t.epoch] = t.unwrapped_model.memory.instances.clone()

    def after_step(self):
        t = self.trainer
        if t.epoch >= 2:
            self.steps.append((snapshot(t.unwrapped_model), snapshot(t.teacher)))

    def after_epoch(self):
        self.after_epoch_student[self.trainer.epoch] = snapshot(self.trainer.unwrapped_model)


def equal_states(a, b, keys=None):
    return all(torch.equal(a[k], b[k]) for k in (keys or a))


@pytest.fixture(scope="module")
def run(demo_root):
    """One 4-epoch run, shared by the checks below."""
    import dcmip.engine.hooks as hooks_module

    root, weights = demo_root
    monkeypatch = pytest.MonkeyPatch()
    extracted = []
    real_extract = hooks_module.extract_many

    def recording_extract(cfg, models, items, cache=None):
        features = real_extract(cfg, models, items, cache=cache)
        extracted.extend(features.items())
        return features

    monkeypatch.setattr(hooks_module, "extract_many", recording_extract)
    trainer = build_trainer(root, weights, monkeypatch)
    calls = iter(RESULTS)
    monkeypatch.setattr(trainer, "test", lambda cfg, model: dict(next(calls)))
    recorder = Recorder()
    clustering = next(h for h in trainer._hooks if type(h).__name__ == "ClusteringHook")
    pseudo = {}

    class KeepPseudo(HookBase):
        def before_epoch(self):
            pseudo[self.trainer.epoch] = clustering.pseudo

    trainer.register_hooks([KeepPseudo(), recorder])
    trainer.resume_or_load(resume=False)
    trainer.train()
    monkeypatch.undo()
    return trainer, recorder, extracted, pseudo


def test_stage2_starts_from_the_best_not_the_last_stage1_weights(run):
    trainer, rec, _, _ = run
    from dcmip.modeling.batch_norm import GroupBatchNorm2d

    for network in (trainer.unwrapped_model, trainer.teacher):  # UNSUP.BN_GROUP_SIZE 8 reached both
        groups = [m.group_size for m in network.modules() if isinstance(m, GroupBatchNorm2d)]
        assert groups and set(groups) == {8}
    student, teacher = rec.stage2_start[2]
    best, last = rec.after_epoch_student[0], rec.after_epoch_student[1]
    params = [k for k, _ in trainer.unwrapped_model.named_parameters()]
    assert not equal_states(best, last, params)
    assert equal_states(student, best) and equal_states(teacher, best)


def test_ema_teacher_moves_every_step_by_the_formula_and_its_own_forward(run):
    trainer, rec, _, _ = run
    params = [k for k, _ in trainer.unwrapped_model.named_parameters()]
    buffers = [k for k in rec.steps[0][1] if "running_mean" in k]
    assert len(rec.steps) == 4  # 2 epochs x 2 steps
    previous_teacher = rec.stage2_start[2][1]
    for step, (student, teacher) in enumerate(rec.steps):
        if step == 2:  # epoch 3 starts: the teacher is untouched by the epoch start
            assert equal_states(rec.stage2_start[3][1], previous_teacher)
        for k in params:
            torch.testing.assert_close(teacher[k], 0.9 * previous_teacher[k] + 0.1 * student[k], rtol=0, atol=1e-6)
        assert not equal_states(teacher, previous_teacher, params), step
        # TEACHER_BN "forward": statistics moved by the teacher's own pass. At stage 2's first
        # step teacher and student hold the same weights and see the same images, so their
        # statistics agree exactly (under "ema" they would not); afterwards they part.
        assert not equal_states(teacher, previous_teacher, buffers), step
        assert equal_states(teacher, student, buffers) == (step == 0), step
        previous_teacher = teacher


def test_instance_memory_is_drawn_from_the_teachers_epoch_start_features(run):
    trainer, rec, extracted, pseudo = run
    teacher_runs = [f for desc, f in extracted if desc == "epoch 3 teacher features"]
    student_runs = [f for desc, f in extracted if desc == "epoch 3 train features"]
    assert len(teacher_runs) == len(student_runs) == 1
    p = pseudo[3]
    teacher_features, student_features = teacher_runs[0][p.indices], student_runs[0][p.indices]
    assert not torch.equal(teacher_features, student_features)
    instances, c = rec.instances[3], p.num_clusters
    for row in range(len(instances)):
        members = p.clusters == row % c
        assert (teacher_features[members] == instances[row]).all(dim=1).any(), row
        assert not (student_features == instances[row]).all(dim=1).any(), row


def test_selection_by_map_picks_the_teacher_on_a_tie_and_keeps_the_best(run):
    """Epoch 2: student and teacher tie at mAP 5 (teacher kept as candidate, not better than
    50); epoch 3: teacher 60 beats 50, so model_best holds the teacher of epoch 3."""
    trainer, rec, _, _ = run
    assert trainer.best_metric == 60.0
    saved = torch.load(os.path.join(trainer.cfg.OUTPUT_DIR, "model_best.pth"), map_location="cpu",
                       weights_only=False)
    assert saved["metric"] == 60.0
    assert equal_states(saved["model"], rec.steps[-1][1])


def test_stage2_logs_student_and_teacher_under_their_own_keys(run):
    """The plain keys hold the candidate (the teacher at both stage-2 evaluations here); the
    student's and the teacher's results are kept apart at every stage-2 evaluation."""
    trainer = run[0]
    history = trainer.storage.history
    assert [v for v, _ in history("student/mAP").values()] == [5.0, 1.0]
    assert [v for v, _ in history("teacher/mAP").values()] == [5.0, 60.0]
    assert [v for v, _ in history("student/Rank-1").values()] == [1.0, 1.0]
    assert [v for v, _ in history("teacher/Rank-1").values()] == [0.0, 1.0]


def test_unknown_selection_metric_is_refused_before_training(demo_root, monkeypatch):
    from dcmip.registry import UserInputError

    root, weights = demo_root
    with pytest.raises(UserInputError, match="UNSUP.SELECT_METRIC 'top1'.*Rank-1.*mAP"):
        build_trainer(root, weights, monkeypatch, "UNSUP.SELECT_METRIC", "top1")


def test_selection_keys():
    """"mAP", fastreid's "metric" and every other result key are accepted; the ROC keys only
    when the evaluator computes them."""
    from dcmip.config import add_dcmip_config
    from dcmip.engine.selection import check_select_metric, selection_value
    from dcmip.registry import UserInputError
    from fastreid.config import get_cfg

    cfg = add_dcmip_config(get_cfg())
    assert cfg.UNSUP.SELECT_METRIC == "mAP"
    for key in ("mAP", "metric", "Rank-1", "Rank-10", "mINP"):
        cfg.UNSUP.SELECT_METRIC = key
        assert check_select_metric(cfg) == key
    cfg.UNSUP.SELECT_METRIC = "TPR@FPR=1e-04"
    with pytest.raises(UserInputError, match="choose one of"):
        check_select_metric(cfg)
    cfg.TEST.ROC.ENABLED = True
    assert check_select_metric(cfg) == "TPR@FPR=1e-04"
    assert selection_value({"mAP": 12.5, "metric": 30.0}, "metric") == 30.0
    with pytest.raises(UserInputError, match="returned only mAP"):
        selection_value({"mAP": 12.5}, "Rank-1")
