"""F1 score, macro-averaged by default (an `evaluate` metric)."""

import evaluate
from sklearn.metrics import f1_score

import sft.problems.metric_modules._classification as base


class F1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Harmonic mean of precision and recall, averaged over classes.",
            citation="",
            inputs_description="predictions and references: lists of integer class ids, or in "
            "the 'multilabel' configuration lists of 0/1 vectors; average: macro (default), "
            "micro, weighted, samples (multilabel), or None for one score per class",
            features=base.features(self.config_name),
        )

    def _compute(self, predictions, references, labels=None, average="macro", sample_weight=None):
        score = f1_score(
            references,
            predictions,
            labels=labels,
            average=average,
            sample_weight=sample_weight,
            zero_division=0,
        )
        return {"f1": score.tolist() if hasattr(score, "tolist") and score.ndim else float(score)}
