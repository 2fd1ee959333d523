"""Model selection: the evaluation result that picks ``model_best`` (UNSUP.SELECT_METRIC).

The authors' DCMIP keeps the checkpoint of best mAP, in stage 2 the better of student and
teacher by mAP, the teacher on a tie (``examples/cluster_contrast_train_usl.py``:
``is_best = mAP_1 > best_mAP or mAP_2 > best_mAP``, teacher saved when ``mAP_1 <= mAP_2``);
fastreid's ``metric`` is (mAP + Rank-1) / 2.
"""
from typing import Dict, Tuple

from ..registry import UserInputError


def evaluator_keys(cfg) -> Tuple[str, ...]:
    """The keys of fastreid's ``ReidEvaluator`` results under ``cfg``."""
    keys = ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP", "metric")
    if cfg.TEST.ROC.ENABLED:
        keys += tuple(f"TPR@FPR={fpr:.0e}" for fpr in (1e-4, 1e-3, 1e-2))
    return keys


def check_select_metric(cfg) -> str:
    """UNSUP.SELECT_METRIC, or a :class:`UserInputError` naming the valid keys."""
    key = cfg.UNSUP.SELECT_METRIC
    if key not in evaluator_keys(cfg):
        raise UserInputError(f"UNSUP.SELECT_METRIC {key!r}: not a result of the evaluator; choose one of "
                             f"{', '.join(evaluator_keys(cfg))} (the authors select by mAP).")
    return key


def selection_value(results: Dict, key: str) -> float:
    if key not in results:
        raise UserInputError(f"UNSUP.SELECT_METRIC {key!r}: the evaluation returned only "
                             f"{', '.join(results)}.")
    return float(results[key])
