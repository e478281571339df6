"""Single-label scores (through `evaluate`, sft/problems/metrics.py) against scikit-learn on seeded
random predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
)

from sft.problems import PROBLEMS

headline, report = PROBLEMS["single_label"].scores, PROBLEMS["single_label"].report


def _case(seed: int, n: int, n_classes: int, drop_from_predictions: int | None):
    rng = np.random.default_rng(seed)
    references = rng.integers(0, n_classes, size=n)
    predictions = rng.integers(0, n_classes, size=n)
    if drop_from_predictions is not None:
        predictions[predictions == drop_from_predictions] = (drop_from_predictions + 1) % n_classes
        assert drop_from_predictions not in predictions
        assert drop_from_predictions in references
    return predictions, references


CASES = [
    pytest.param(0, 50, 2, None, id="binary"),
    pytest.param(1, 200, 5, None, id="five-classes"),
    pytest.param(2, 120, 4, 3, id="class-3-never-predicted"),
    pytest.param(3, 80, 3, 0, id="class-0-never-predicted"),
]


@pytest.mark.parametrize(("seed", "n", "n_classes", "drop"), CASES)
def test_headline_matches_sklearn_accuracy_and_macro_f1(seed, n, n_classes, drop):
    predictions, references = _case(seed, n, n_classes, drop)
    scores = headline(predictions, references)
    assert set(scores) == {"accuracy", "f1"}
    assert scores["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    expected_f1 = f1_score(references, predictions, average="macro", zero_division=0)
    assert scores["f1"] == pytest.approx(expected_f1)


@pytest.mark.parametrize(("seed", "n", "n_classes", "drop"), CASES)
def test_report_matches_sklearn_per_class_and_confusion_matrix(seed, n, n_classes, drop):
    predictions, references = _case(seed, n, n_classes, drop)
    labels = [f"class_{i}" for i in range(n_classes)]
    result = report(predictions, references, labels)

    assert result["num_examples"] == n
    assert result["labels"] == labels
    assert result["accuracy"] == pytest.approx(accuracy_score(references, predictions))
    assert result["f1"] == pytest.approx(
        f1_score(references, predictions, average="macro", zero_division=0)
    )

    ids = list(range(n_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        references, predictions, labels=ids, zero_division=0
    )
    assert list(result["per_class"]) == labels
    for i, name in enumerate(labels):
        row = result["per_class"][name]
        assert row["precision"] == pytest.approx(precision[i])
        assert row["recall"] == pytest.approx(recall[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["support"] == support[i]
        assert row["support"] == int((references == i).sum())

    expected_cm = confusion_matrix(references, predictions, labels=ids)
    assert np.array_equal(np.array(result["confusion_matrix"]), expected_cm)
    assert np.array(result["confusion_matrix"]).sum() == n


def test_report_never_predicted_class_has_zero_precision_and_recall():
    predictions, references = _case(2, 120, 4, 3)
    result = report(predictions, references, ["a", "b", "c", "d"])
    never = result["per_class"]["d"]
    assert never["precision"] == 0.0
    assert never["recall"] == 0.0
    assert never["f1"] == 0.0
    assert never["support"] == int((references == 3).sum()) > 0
    assert [row[3] for row in result["confusion_matrix"]] == [0, 0, 0, 0]
