"""Pearson correlation coefficient (an `evaluate` metric)."""

from scipy.stats import pearsonr

import sft.problems.metric_modules._regression as base


class PearsonR(base.RegressionMetric):
    result_key = "pearsonr"
    description = "Linear correlation between predictions and references."
    per_target = True  # one correlation per target, averaged

    def score(self, predictions, references) -> float:
        return pearsonr(predictions, references).statistic
