"""Coefficient of determination, R squared (an `evaluate` metric)."""

from sklearn.metrics import r2_score

import sft.problems.metric_modules._regression as base


class RSquared(base.RegressionMetric):
    result_key = "r_squared"
    description = "1 - residual / total sum of squares (1: perfect, 0: the mean)."

    def score(self, predictions, references) -> float:
        return r2_score(references, predictions)
