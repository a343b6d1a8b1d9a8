"""Candidate evaluation: one protocol (``evaluate(arch)`` / ``evaluate_many(archs)``), extract + BN recalibration
in one place (:class:`SupernetEvaluator`), and the metrics of each kind of evaluation."""
from nasx.evaluation.base import Evaluator, SupernetEvaluator, bn_recalibrate, to_device
from nasx.evaluation.classification import ClassificationEvaluator, classification_metrics, scored_predictions

__all__ = ["Evaluator", "SupernetEvaluator", "ClassificationEvaluator", "bn_recalibrate", "classification_metrics",
           "scored_predictions", "to_device"]
