"""Spearman rank correlation coefficient (an `evaluate` metric)."""

from scipy.stats import spearmanr

import sft.problems.metric_modules._regression as base


class SpearmanR(base.RegressionMetric):
    result_key = "spearmanr"
    description = "Correlation between the ranks of predictions and references."
    per_target = True  # one correlation per target, averaged

    def score(self, predictions, references) -> float:
        return spearmanr(predictions, references).statistic
