"""Mean absolute error (an `evaluate` metric)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import mean_absolute_error


class MAE(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        value = datasets.Value("float64")
        if self.config_name == "multilist":  # several targets per example
            value = datasets.Sequence(value)
        return evaluate.MetricInfo(
            description="Mean of the absolute differences between predictions and references.",
            citation="",
            inputs_description="predictions and references: lists of numbers, or in the "
            "'multilist' configuration lists of equal-length lists (one column per target, "
            "scored per target and averaged)",
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        return {"mae": float(mean_absolute_error(references, predictions))}
