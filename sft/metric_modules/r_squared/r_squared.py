"""Coefficient of determination, R squared (an `evaluate` metric)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import r2_score


class RSquared(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        value = datasets.Value("float64")
        if self.config_name == "multilist":  # several targets per example
            value = datasets.Sequence(value)
        return evaluate.MetricInfo(
            description="1 - residual / total sum of squares (1: perfect, 0: the mean).",
            citation="",
            inputs_description="predictions and references: lists of numbers, or in the "
            "'multilist' configuration lists of equal-length lists (one column per target, "
            "scored per target and averaged)",
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"r_squared": float(r2_score(references, predictions))}
