"""Classification metrics: accuracy and macro-F1 through `evaluate` (modules shipped in
`sft/metric_modules`, so no Hub access), plus a per-class report and a confusion matrix."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

MODULES = Path(__file__).parent / "metric_modules"


@functools.cache
def _load(name: str):
    # `import evaluate` costs 6-13 s (it imports transformers pipelines): only when first needed.
    import evaluate

    return evaluate.load(str(MODULES / name))


def load() -> None:
    """Import `evaluate` and load the modules `headline` uses, now rather than at the first
    evaluation: callers that time evaluations time the work, not this one-off."""
    _load("accuracy"), _load("f1")


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
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    return {
        **headline(predictions, references),
        "num_examples": len(references),
        "per_class": per_class,
        "labels": labels,
        "confusion_matrix": confusion_matrix(references, predictions, labels=ids).tolist(),
    }


def final_report(final: Any, validation: Any, labels: list[str], split: str) -> dict[str, Any]:
    """metrics.json's scores: the `report` of the final evaluation (an `sft.state.Evaluation`)
    on `split`, its loss, and the best checkpoint's validation scores."""
    return {
        "split": split,
        **report(final.predictions, final.references, labels),
        "loss": final.loss,
        "validation": {"loss": validation.loss, **validation.scores},
    }
