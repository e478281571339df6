"""Scores through `evaluate` (modules shipped in `sft/metric_modules`, so no Hub access):
single-label accuracy and macro-F1 with a per-class report and a confusion matrix; multi-label
macro/micro-F1 and subset accuracy with per-label precision/recall/F1; regression MSE, MAE, R²,
Pearson and Spearman, per target where there are several."""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

MODULES = Path(__file__).parent / "metric_modules"


@functools.cache
def _load(name: str, config_name: str | None = None):
    # `import evaluate` costs 6-13 s (it imports transformers pipelines): only when first needed.
    import evaluate

    return evaluate.load(str(MODULES / name), config_name)


# Regression scores: metrics.json key -> the metric module computing it (and its result key).
REGRESSION = {"mse": "mse", "mae": "mae", "r2": "r_squared", "pearson": "pearsonr",
              "spearman": "spearmanr"}  # fmt: skip

# The (module, configuration) pairs each problem's scores use.
MODULES_OF = {
    "single_label": [("accuracy", None), ("f1", None)],
    "multi_label": [("accuracy", "multilabel"), ("f1", "multilabel")],
    "regression": [(m, config) for m in REGRESSION.values() for config in (None, "multilist")],
}


LOWER_IS_BETTER = {"loss", "mse", "mae"}


def better(metric: str, value: float) -> float:
    """`value` turned so that larger is better (loss, mse, mae are better smaller); an undefined
    score (NaN: a correlation of constant predictions) is the worst."""
    if value != value:
        return -math.inf
    return -value if metric in LOWER_IS_BETTER else value


def load(problem: str = "single_label") -> None:
    """Import `evaluate` and load the modules `problem`'s scores use, now rather than at the
    first evaluation: callers that time evaluations time the work, not this one-off."""
    for name, config in MODULES_OF[problem]:
        _load(name, config)


def headline(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (averaged over the classes that occur in references or predictions,
    as scikit-learn and the Hub's `f1` metric do)."""
    predictions, references = predictions.tolist(), references.tolist()
    accuracy = _load("accuracy").compute(predictions=predictions, references=references)
    f1 = _load("f1").compute(predictions=predictions, references=references, average="macro")
    return {"accuracy": float(accuracy["accuracy"]), "f1": float(f1["f1"])}


def report(predictions: np.ndarray, references: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Headline scores plus per-class precision/recall/F1/support and the confusion matrix
    (rows: true label, columns: predicted label, both in `labels` order)."""
    ids = list(range(len(labels)))
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=ids, zero_division=0
    )
    return {
        **headline(predictions, references),
        "num_examples": len(references),
        "per_class": _per_class(labels, precision, recall, f1, support),
        "labels": labels,
        "confusion_matrix": confusion_matrix(references, predictions, labels=ids).tolist(),
    }


MULTI_LABEL_HEADLINE = ("f1", "f1_micro", "accuracy")


def multi_label_headline(
    predictions: np.ndarray, references: np.ndarray, names: tuple[str, ...] = MULTI_LABEL_HEADLINE
) -> dict[str, float]:
    """Macro-F1 (f1), micro-F1 (f1_micro) and subset accuracy (accuracy: every label right) of
    0/1 rows, one column per label; only those of `names`."""
    args = {"predictions": predictions.tolist(), "references": references.tolist()}
    f1, accuracy = _load("f1", "multilabel"), _load("accuracy", "multilabel")
    compute = {
        "f1": lambda: f1.compute(**args, average="macro")["f1"],
        "f1_micro": lambda: f1.compute(**args, average="micro")["f1"],
        "accuracy": lambda: accuracy.compute(**args)["accuracy"],
    }
    return {name: float(compute[name]()) for name in names}


def multi_label_report(
    predictions: np.ndarray, references: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """`multi_label_headline` plus precision/recall/F1/support per label."""
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, zero_division=0
    )
    return {
        **multi_label_headline(predictions, references),
        "num_examples": len(references),
        "per_class": _per_class(labels, precision, recall, f1, support),
        "labels": labels,
    }


def regression_scores(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """MSE, MAE, R², Pearson and Spearman; averaged over targets where there are several."""
    several = predictions.ndim == 2 and predictions.shape[1] > 1
    if not several:
        predictions, references = predictions.reshape(-1), references.reshape(-1)
    config = "multilist" if several else None
    args = {"predictions": predictions.tolist(), "references": references.tolist()}
    return {key: float(_load(m, config).compute(**args)[m]) for key, m in REGRESSION.items()}


def regression_report(
    predictions: np.ndarray, references: np.ndarray, targets: list[str]
) -> dict[str, Any]:
    """`regression_scores`, and the same per target when there are several."""
    report = {**regression_scores(predictions, references), "num_examples": len(references)}
    if len(targets) > 1:
        report["per_target"] = {
            name: regression_scores(predictions[:, j], references[:, j])
            for j, name in enumerate(targets)
        }
    return {**report, "labels": targets}


def _per_class(labels, precision, recall, f1, support) -> dict[str, dict[str, float]]:
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
