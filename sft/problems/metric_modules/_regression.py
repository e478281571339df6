"""What the regression metric modules share: inputs (numbers, or in the 'multilist'
configuration one list per example with a number per target) and per-target averaging.
Each module subclasses `RegressionMetric` through `import ... as base`, so that its own class is
the only metric class in its namespace (how `evaluate.load` finds it)."""

import datasets
import evaluate
import numpy as np


class RegressionMetric(evaluate.Metric):
    result_key = ""  # the key of the result
    description = ""
    per_target = False  # score each target alone and average (correlations); else sklearn's

    def _info(self) -> evaluate.MetricInfo:
        value = datasets.Value("float64")
        if self.config_name == "multilist":  # several targets per example
            value = datasets.Sequence(value)
        return evaluate.MetricInfo(
            description=self.description,
            citation="",
            inputs_description="predictions and references: lists of numbers, or in the "
            "'multilist' configuration lists of equal-length lists (one column per target, "
            "scored per target and averaged)",
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if self.per_target and predictions.ndim == 2:
            columns = zip(predictions.T, references.T, strict=True)
            return {self.result_key: float(np.mean([self.score(p, r) for p, r in columns]))}
        return {self.result_key: float(self.score(predictions, references))}

    def score(self, predictions: np.ndarray, references: np.ndarray) -> float:
        raise NotImplementedError
