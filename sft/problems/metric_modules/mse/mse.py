"""Mean squared error (an `evaluate` metric)."""

from sklearn.metrics import mean_squared_error

import sft.problems.metric_modules._regression as base


class MSE(base.RegressionMetric):
    result_key = "mse"
    description = "Mean of the squared differences between predictions and references."

    def score(self, predictions, references) -> float:
        return mean_squared_error(references, predictions)
