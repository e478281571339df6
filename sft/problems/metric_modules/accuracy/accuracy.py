"""Accuracy: the share of predictions equal to their reference (an `evaluate` metric)."""

import evaluate
from sklearn.metrics import accuracy_score

import sft.problems.metric_modules._classification as base


class Accuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Share of predictions that equal their reference.",
            citation="",
            inputs_description="predictions and references: lists of integer class ids, or in "
            "the 'multilabel' configuration lists of 0/1 vectors (then the share of examples "
            "with every label right: subset accuracy)",
            features=base.features(self.config_name),
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        score = accuracy_score(
            references, predictions, normalize=normalize, sample_weight=sample_weight
        )
        return {"accuracy": float(score)}
