"""Spearman rank correlation coefficient (an `evaluate` metric)."""

import datasets
import evaluate
import numpy as np
from scipy.stats import spearmanr


class SpearmanR(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        value = datasets.Value("float64")
        if self.config_name == "multilist":  # several targets per example
            value = datasets.Sequence(value)
        return evaluate.MetricInfo(
            description="Correlation between the ranks of predictions and references.",
            citation="",
            inputs_description="predictions and references: lists of numbers, or in the "
            "'multilist' configuration lists of equal-length lists (one column per target, "
            "scored per target and averaged)",
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        columns = zip(_columns(predictions), _columns(references), strict=True)
        return {"spearmanr": float(np.mean([spearmanr(p, r).statistic for p, r in columns]))}


def _columns(values: np.ndarray) -> list[np.ndarray]:
    return [values] if values.ndim == 1 else list(values.T)
