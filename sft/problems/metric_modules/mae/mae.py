"""Mean absolute error (an `evaluate` metric)."""

from sklearn.metrics import mean_absolute_error

import sft.problems.metric_modules._regression as base


class MAE(base.RegressionMetric):
    result_key = "mae"
    description = "Mean of the absolute differences between predictions and references."

    def score(self, predictions, references) -> float:
        return mean_absolute_error(references, predictions)
