"""One label per example: softmax over the labels, the argmax predicted. Targets: one value per
row in `data.label_column`, a class id in the model's label order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from sft.config import LossConfig
from sft.data.columns import column_values
from sft.data.targets import Encoder, TargetSpec, filled_values, refuse_unseen
from sft.errors import SftError
from sft.problems import calibration, metrics
from sft.problems.base import CardMetric, Loss, Mistake, Problem


class SingleLabel(Problem):
    name, problem_type = "single_label", "single_label_classification"
    metrics = ("f1", "accuracy")
    metric_modules = (("accuracy", None), ("f1", None))
    card_metrics = (
        CardMetric("accuracy", "accuracy", "Accuracy"),
        CardMetric("f1", "f1", "Macro F1", {"average": "macro"}),
    )
    settings = ("loss.label_smoothing", "loss.class_weights")
    needs_every_score = False  # the top k are enough
    stratifies = True
    pipeline_args = ""

    # -- targets -----------------------------------------------------------------------------
    def target_names(self, train, spec, where) -> list[str]:
        """Class names: a `ClassLabel` column keeps its names; otherwise the sorted distinct
        train values (numbers sorted numerically), so the mapping is the same on every run."""
        feature = train.features[spec.column]
        if isinstance(feature, datasets.ClassLabel):
            names = list(feature.names)
        else:
            distinct = set(filled_values(train, spec.column, where))
            if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in distinct):
                names = [str(v) for v in sorted(distinct)]
            else:
                names = sorted(str(v) for v in distinct)
        if len(names) < 2:
            raise SftError(
                f"{where} has {len(names)} distinct label(s) {names}; a classifier needs at "
                f"least two"
            )
        return names

    def target_encoder(self, spec: TargetSpec, names: list[str]) -> Encoder:
        """Each row's label matched to `names` by name (a `ClassLabel` id by its name)."""
        index = {name: i for i, name in enumerate(names)}

        def encode(ds: datasets.Dataset, where: str) -> np.ndarray:
            feature = ds.features[spec.column]
            keys = [_name(feature, v) for v in filled_values(ds, spec.column, where)]
            refuse_unseen(sorted({k for k in keys if k not in index}), names, where)
            return np.array([index[k] for k in keys], dtype=np.int64)

        return encode

    def unlabelled(self, ds, spec) -> bool:
        if spec.columns:
            return False
        values = column_values(ds, spec.column)
        return all(v is None or (isinstance(v, int) and v < 0) for v in values)

    # -- training and scores -----------------------------------------------------------------
    def loss(self, cfg: LossConfig, train_targets: np.ndarray, num_labels: int) -> Loss:
        from sft.problems.loss import class_weights, cross_entropy

        weights = class_weights(cfg.class_weights, train_targets, num_labels)
        return cross_entropy(weights, cfg.label_smoothing)

    def eval_loss(self, logits, targets) -> float:
        return F.cross_entropy(logits, targets).item()

    def predict(self, logits) -> np.ndarray:
        return logits.argmax(-1).numpy()

    def scores(self, predictions, references) -> dict[str, float]:
        """Accuracy and macro-F1 (averaged over the classes that occur in references or
        predictions, as scikit-learn and the Hub's `f1` metric do)."""
        args = {"predictions": predictions.tolist(), "references": references.tolist()}
        accuracy = metrics.module("accuracy").compute(**args)["accuracy"]
        f1 = metrics.module("f1").compute(**args, average="macro")["f1"]
        return {"accuracy": float(accuracy), "f1": float(f1)}

    def report(self, predictions, references, labels) -> dict[str, Any]:
        """`scores` plus per-class precision/recall/F1/support and the confusion matrix (rows:
        true label, columns: predicted label, both in `labels` order)."""
        ids = list(range(len(labels)))
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predictions, labels=ids, zero_division=0
        )
        return {
            **self.scores(predictions, references),
            "num_examples": len(references),
            "per_class": metrics.per_class(labels, precision, recall, f1, support),
            "labels": labels,
            "confusion_matrix": confusion_matrix(references, predictions, labels=ids).tolist(),
        }

    # -- calibration -------------------------------------------------------------------------
    calibrates = True

    def probabilities(self, logits) -> np.ndarray:
        return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), -1).numpy()

    def _nll(self, references, logits) -> torch.Tensor:
        return F.cross_entropy(logits, torch.as_tensor(references, dtype=torch.long))

    def _separated(self, evaluation) -> bool:
        return bool((np.asarray(evaluation.logits).argmax(-1) == evaluation.references).all())

    def _calibration_scores(self, logits, references) -> dict:
        """Of the predicted label's probability (its confidence) against being right."""
        p = self.probabilities(logits)
        confidence, correct = p.max(-1), p.argmax(-1) == references
        truth = np.eye(p.shape[1])[references]
        return {
            "ece": calibration.ece(confidence, correct),
            "nll": float(self._nll(references, torch.as_tensor(logits, dtype=torch.float64))),
            "brier": float(((p - truth) ** 2).sum(-1).mean()),
            "bins": calibration.reliability(confidence, correct),
        }

    # -- what users see ----------------------------------------------------------------------
    def prediction(self, scores, config, top_k) -> dict[str, Any]:
        top = sorted(scores, key=lambda s: -s["score"])[:top_k]
        return {"label": top[0]["label"], "score": top[0]["score"], "top_k": top}

    def describes(self, results) -> str:
        return f"{len(results['labels'])} labels: {', '.join(results['labels'])}."

    def mistakes(self, evaluation, labels) -> list[Mistake]:
        """Wrong predictions by the probability the model gave its (wrong) label."""
        p = self.probabilities(evaluation.logits)
        wrong = np.flatnonzero(evaluation.predictions != evaluation.references)
        found = [
            Mistake(int(i), labels[evaluation.references[i]], labels[predicted], p[i, predicted])
            for i in wrong
            for predicted in [int(evaluation.predictions[i])]
        ]
        return sorted(found, key=lambda m: -m.score)

    def worst_first(self, report) -> tuple[list[str], list[list[str]]]:
        """Per class, worst F1 first, with the label its examples were most often taken for."""
        header, rows = super().worst_first(report)
        counts = np.asarray(report["confusion_matrix"])
        np.fill_diagonal(counts, 0)
        index = {name: i for i, name in enumerate(report["labels"])}
        for row in rows:
            confused = counts[index[row[0]]]
            j = int(confused.argmax())
            row.append(f"{report['labels'][j]} ({confused[j]})" if confused[j] else "")
        return [*header, "most confused with"], rows

    def plot_outcome(self, report, evaluation, title, out) -> Path:
        from sft.problems import plots  # matplotlib: only when drawing

        self.plot_calibration(report, out)  # reliability.png, where the run calibrated
        return plots.plot_confusion(
            report["confusion_matrix"],
            report["labels"],
            f"{title} confusion matrix",
            out / "confusion_matrix.png",
        )


def _name(feature, value) -> str:
    """A label's name: a `ClassLabel` id's name (an id it lacks, such as GLUE's hidden -1, as
    the number itself), any other value as a string."""
    if isinstance(feature, datasets.ClassLabel) and isinstance(value, int):
        return feature.names[value] if 0 <= value < len(feature.names) else str(value)
    return str(value)
