"""Re-ID evaluation: exact blocked ranking metrics (:mod:`.rank`) and the evaluator the trainer
uses (:mod:`.evaluator`)."""
from .rank import RankResult, evaluate_rank

__all__ = ["RankResult", "evaluate_rank"]
