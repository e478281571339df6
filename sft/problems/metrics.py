"""Scores through `evaluate`: the metric modules ship beside this file (metric_modules/), so no
Hub access. Each problem type names the modules it computes its scores with; this module loads
them, tabulates per-class scores, and says which way a score is better."""

from __future__ import annotations

import functools
import math
from pathlib import Path

MODULES = Path(__file__).parent / "metric_modules"


@functools.cache
def module(name: str, config_name: str | None = None):
    """The `evaluate` metric module `name` (in `config_name`), loaded once per process."""
    # `import evaluate` costs 6-13 s (it imports transformers pipelines): only when first needed.
    import evaluate

    return evaluate.load(str(MODULES / name), config_name)


LOWER_IS_BETTER = {"loss", "mse", "mae"}


def better(metric: str, value: float) -> float:
    """`value` turned so that larger is better (loss, mse, mae are better smaller); an undefined
    score (NaN: a correlation of constant predictions) is the worst."""
    if value != value:
        return -math.inf
    return -value if metric in LOWER_IS_BETTER else value


def per_class(labels, precision, recall, f1, support) -> dict[str, dict[str, float]]:
    """metrics.json's per-label report from scikit-learn's precision_recall_fscore_support."""
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
