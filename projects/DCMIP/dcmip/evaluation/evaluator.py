"""fastreid's ``ReidEvaluator`` with the exact blocked ranking of :func:`dcmip.evaluation.rank.evaluate_rank`
instead of a full argsort of the query x gallery distance matrix.

Same ``process`` / ``evaluate`` interface, same collection (features to the CPU; under DDP
gathered to rank 0, which alone returns results), same result keys and scale (percent):
``Rank-1``, ``Rank-5``, ``Rank-10``, ``mAP``, ``mINP``, ``metric`` = (mAP + Rank-1) / 2.
The ranking runs on MODEL.DEVICE when that is a GPU, on the CPU otherwise.

Not supported (they need the whole distance matrix): ``TEST.AQE`` (query expansion),
``TEST.RERANK`` (k-reciprocal re-ranking) and ``TEST.ROC`` (TPR@FPR over every query-gallery
pair). Enabling one raises :class:`UserInputError`; ``UNSUP.EVALUATOR fastreid`` selects
fastreid's own evaluator, which has them.
"""
import copy
import itertools
from collections import OrderedDict

import torch
from fastreid.evaluation import ReidEvaluator
from fastreid.utils import comm

from ..registry import UserInputError
from .rank import METRICS, evaluate_rank

__all__ = ["BlockedReidEvaluator", "check_evaluator_config", "EVALUATORS"]

EVALUATORS = ("blocked", "fastreid")
_FULL_MATRIX_OPTIONS = (("TEST.AQE.ENABLED", "query expansion"), ("TEST.RERANK.ENABLED", "re-ranking"),
                        ("TEST.ROC.ENABLED", "the ROC / TPR@FPR metrics"))


def check_evaluator_config(cfg):
    """Raise :class:`UserInputError` for a UNSUP.EVALUATOR / TEST option the evaluator does not do."""
    if cfg.UNSUP.EVALUATOR not in EVALUATORS:
        raise UserInputError(f"UNSUP.EVALUATOR must be one of {EVALUATORS}, got {cfg.UNSUP.EVALUATOR!r}.")
    if cfg.UNSUP.EVALUATOR == "fastreid":
        return
    for key, what in _FULL_MATRIX_OPTIONS:
        node = cfg
        for part in key.split(".")[:-1]:
            node = node[part]
        if node[key.split(".")[-1]]:
            raise UserInputError(f"{key} is on, but the blocked evaluator (UNSUP.EVALUATOR blocked) has no "
                                 f"{what}: it never holds the full distance matrix. Set {key} False, "
                                 f"or UNSUP.EVALUATOR fastreid for fastreid's evaluator (slow on large "
                                 f"test sets).")
    if cfg.TEST.METRIC not in METRICS:
        raise UserInputError(f"TEST.METRIC must be one of {METRICS} for the blocked evaluator, got "
                             f"{cfg.TEST.METRIC!r}.")


class BlockedReidEvaluator(ReidEvaluator):
    """:class:`fastreid.evaluation.ReidEvaluator` ranking with :func:`evaluate_rank`."""

    def __init__(self, cfg, num_query: int, output_dir=None):
        check_evaluator_config(cfg)
        super().__init__(cfg, num_query, output_dir)

    def _compile_dependencies(self):
        pass  # fastreid's Cython ranking module is not used

    def evaluate(self):
        # Collection exactly as fastreid's ReidEvaluator.evaluate.
        if comm.get_world_size() > 1:
            comm.synchronize()
            predictions = list(itertools.chain(*comm.gather(self._predictions, dst=0)))
            if not comm.is_main_process():
                return {}
        else:
            predictions = self._predictions
        if not predictions:
            raise UserInputError("The evaluator received no features: the test set is empty.")

        on_gpu = self.cfg.MODEL.DEVICE.startswith("cuda") and torch.cuda.is_available()
        device = torch.device(self.cfg.MODEL.DEVICE if on_gpu else "cpu")
        features = torch.cat([p["feats"] for p in predictions]).to(device)
        pids = torch.cat([p["pids"] for p in predictions])
        camids = torch.cat([p["camids"] for p in predictions])
        n = self._num_query
        result = evaluate_rank(features[:n], features[n:], pids[:n], pids[n:], camids[:n], camids[n:],
                               metric=self.cfg.TEST.METRIC)

        self._results = OrderedDict()
        for r in (1, 5, 10):
            self._results[f"Rank-{r}"] = float(result.cmc[r - 1]) * 100
        self._results["mAP"] = result.mAP * 100
        self._results["mINP"] = result.mINP * 100
        self._results["metric"] = (result.mAP + float(result.cmc[0])) / 2 * 100
        return copy.deepcopy(self._results)
