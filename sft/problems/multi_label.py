"""Any number of labels per example: a sigmoid score per label, each predicted above one
threshold tuned on validation. Targets: `data.label_column` holding lists, or strings split at
`data.label_separator`; or `data.label_columns`, one 0/1 column per label (the column names are
the label names)."""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import precision_recall_fscore_support

from sft.config import LossConfig
from sft.data.columns import column_values
from sft.data.targets import (
    Encoder,
    TargetSpec,
    empty,
    feature_kind,
    filled_values,
    refuse_unseen,
)
from sft.errors import SftError
from sft.problems import calibration, metrics
from sft.problems.base import CardMetric, Loss, Mistake, Problem

if TYPE_CHECKING:
    from sft.training.state import Evaluation


class MultiLabel(Problem):
    """Independent yes/no per label: sigmoid scores, a label predicted above one threshold,
    tuned on validation at every evaluation (`tune`; 0.5 before any)."""

    name, problem_type = "multi_label", "multi_label_classification"
    # Macro-F1 (f1), micro-F1 (f1_micro) and subset accuracy (accuracy: every label right)
    metrics = ("f1", "f1_micro", "accuracy")
    metric_modules = (("accuracy", "multilabel"), ("f1", "multilabel"))
    card_metrics = (
        CardMetric("f1", "f1", "Macro F1", {"average": "macro"}),
        CardMetric("f1_micro", "f1", "Micro F1", {"average": "micro"}),
        CardMetric("accuracy", "accuracy", "Subset accuracy"),
    )
    settings = ("loss.pos_weight",)
    tag = "multi-label"
    usage_note = (
        "Every label gets its sigmoid score; the labels above the threshold "
        "(`multi_label_threshold` in config.json) are the prediction.\n\n"
    )
    tunes = True
    THRESHOLD = 0.5  # before any tuning, and for a saved model that carries none
    # The thresholds tried on validation: steps of 0.05, and finer in the tails, where weighted
    # positives (loss.pos_weight=auto) or very rare labels put the best one (0.95 was the top
    # and the choice of the first debtags run with pos_weight).
    GRID = np.round(np.r_[0.01, 0.02, 0.03, np.arange(0.05, 0.951, 0.05), 0.97, 0.98, 0.99], 2)

    # -- targets -----------------------------------------------------------------------------
    def target_names(self, train, spec, where) -> list[str]:
        if spec.columns:
            return list(spec.columns)
        names = sorted({label for labels in _label_sets(train, spec, where) for label in labels})
        if not names:
            raise SftError(
                f"{where} has no labels at all in column '{spec.column}': every row's label set "
                f"is empty; check data.label_column and data.label_separator"
            )
        return names

    def target_encoder(self, spec: TargetSpec, names: list[str]) -> Encoder:
        if spec.columns:
            if list(spec.columns) != names:
                raise SftError(
                    f"data.label_columns={list(spec.columns)} differ from the model's labels "
                    f"{names}; name one 0/1 column per label, in that order"
                )
            return partial(_indicator_columns, names)
        index = {name: i for i, name in enumerate(names)}

        def encode(ds: datasets.Dataset, where: str) -> np.ndarray:
            sets = _label_sets(ds, spec, where)
            unseen = sorted({x for labels in sets for x in labels} - set(index))
            refuse_unseen(unseen, names, where)
            hot = np.zeros((len(sets), len(names)), dtype=np.float32)
            for row, labels in enumerate(sets):
                hot[row, [index[x] for x in labels]] = 1.0
            return hot

        return encode

    # -- training and scores -----------------------------------------------------------------
    def head_bias(self, cfg: LossConfig, train_targets: np.ndarray) -> np.ndarray:
        """Each label's log odds in train (times its pos_weight): the constant logit the loss
        is lowest at. From 0 a new head's first steps go to pushing every score down toward
        the labels' rarity (3% positives: -3.5), which at fine-tuning learning rates takes
        thousands of steps and drags the body along."""
        rate = np.clip(np.asarray(train_targets, dtype=np.float64).mean(0), 1e-4, 1 - 1e-4)
        weight = self._pos_weight(cfg, train_targets)
        odds = rate / (1 - rate) * (1.0 if weight is None else weight.numpy())
        return np.log(odds).astype(np.float32)

    def loss(self, cfg: LossConfig, train_targets: np.ndarray, num_labels: int) -> Loss:
        return partial(_binary_cross_entropy, pos_weight=self._pos_weight(cfg, train_targets))

    @staticmethod
    def _pos_weight(cfg: LossConfig, train_targets: np.ndarray) -> torch.Tensor | None:
        if cfg.pos_weight != "auto":
            return None
        positives = np.asarray(train_targets).sum(0)  # negatives per positive, label by label
        if (positives == 0).any():
            raise SftError("loss.pos_weight=auto: a label has no train examples to weigh by")
        return torch.tensor((len(train_targets) - positives) / positives).float()

    def eval_loss(self, logits, targets) -> float:
        return F.binary_cross_entropy_with_logits(logits, targets.float()).item()

    def predict(self, logits, threshold: float = THRESHOLD) -> np.ndarray:
        return (torch.as_tensor(logits).sigmoid() > threshold).long().numpy()

    def tune(self, validation: Evaluation, metric: str) -> dict[str, float]:
        """One threshold on every label's sigmoid score: the one of GRID with the best
        `metric` on validation (macro-F1 when the metric is the loss, which no threshold
        changes); among equals, the nearest to 0.5."""
        metric = "f1" if metric == "loss" else metric
        refs = validation.references.astype(np.int64)

        def score(t: float) -> tuple[float, float]:
            predictions = self.predict(validation.logits, t)
            score = _headline(predictions, refs, (metric,))[metric]
            return score, -abs(t - 0.5)

        return {"multi_label_threshold": float(max(self.GRID, key=score))}

    def saved_rule(self, config: Any) -> dict[str, float]:
        return {"multi_label_threshold": getattr(config, "multi_label_threshold", self.THRESHOLD)}

    def prediction(self, scores, config, top_k) -> dict[str, Any]:
        """Every label scoring above the tuned threshold, best first, and the top k scores."""
        ranked = sorted(scores, key=lambda s: -s["score"])
        threshold = self.saved_rule(config)["multi_label_threshold"]
        labels = [s["label"] for s in ranked if s["score"] > threshold]
        return {"labels": labels, "top_k": ranked[:top_k]}

    def describes(self, results) -> str:
        threshold = results.get("multi_label_threshold", self.THRESHOLD)
        return (
            f"Any of {len(results['labels'])} labels ({', '.join(results['labels'])}), each "
            f"predicted when its sigmoid score is above {threshold:g} (tuned on the validation "
            f"split)."
        )

    def apply(self, evaluation: Evaluation, tuned: dict[str, float]) -> Evaluation:
        predictions = self.predict(evaluation.logits, tuned["multi_label_threshold"])
        scores = self.scores(predictions, evaluation.references)
        return dataclasses.replace(evaluation, predictions=predictions, scores=scores)

    def scores(self, predictions, references) -> dict[str, float]:
        return _headline(predictions, references.astype(np.int64), self.metrics)

    def report(self, predictions, references, labels) -> dict[str, Any]:
        """`scores` plus precision/recall/F1/support per label."""
        references = references.astype(np.int64)
        precision, recall, f1, support = precision_recall_fscore_support(
            references, predictions, zero_division=0
        )
        return {
            **self.scores(predictions, references),
            "num_examples": len(references),
            "per_class": metrics.per_class(labels, precision, recall, f1, support),
            "labels": labels,
        }

    # -- calibration -------------------------------------------------------------------------
    calibrates = True

    def probabilities(self, logits) -> np.ndarray:
        return torch.sigmoid(torch.as_tensor(logits, dtype=torch.float64)).numpy()

    def _nll(self, references, logits) -> torch.Tensor:
        targets = torch.as_tensor(references, dtype=logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, targets)

    def _separated(self, evaluation) -> bool:
        return bool(((np.asarray(evaluation.logits) > 0) == (evaluation.references > 0.5)).all())

    def _calibration_scores(self, logits, references) -> dict:
        """Of every label's probability against the label being there."""
        p, truth = self.probabilities(logits), np.asarray(references, dtype=np.float64)
        return {
            "ece": calibration.ece(p, truth),
            "nll": float(self._nll(references, torch.as_tensor(logits, dtype=torch.float64))),
            "brier": float(((p - truth) ** 2).mean()),
            "bins": calibration.reliability(p, truth),
        }

    # -- what users see ----------------------------------------------------------------------
    def kind(self, task_kind: str) -> str:
        return f"multi-label {task_kind}"

    def mistakes(self, evaluation, labels) -> list[Mistake]:
        """Examples with any label decided wrongly, by the model's confidence in its surest
        wrong decision: p for a label given that is not there, 1 - p for one missed."""
        p = self.probabilities(evaluation.logits)
        truth, given = evaluation.references > 0.5, evaluation.predictions > 0
        confidence = np.where(given, p, 1 - p)  # in each yes/no decision
        wrong = np.where(truth != given, confidence, -1.0).max(-1)

        def names(row: np.ndarray) -> str:
            return ", ".join(labels[j] for j in np.flatnonzero(row)) or "(none)"

        found = [
            Mistake(int(i), names(truth[i]), names(given[i]), float(wrong[i]))
            for i in np.flatnonzero(wrong >= 0)
        ]
        return sorted(found, key=lambda m: -m.score)

    def plot_outcome(self, report, evaluation, title, out) -> Path:
        from sft.problems import plots  # matplotlib: only when drawing

        self.plot_calibration(report, out)  # reliability.png, where the run calibrated
        return plots.plot_per_label(
            report["per_class"], f"{title} scores per label", out / "per_label.png"
        )


def _headline(predictions: np.ndarray, references: np.ndarray, names) -> dict[str, float]:
    """Those of the `metrics` named in `names`, on 0/1 rows with one column per label."""
    args = {"predictions": predictions.tolist(), "references": references.tolist()}
    f1, accuracy = metrics.module("f1", "multilabel"), metrics.module("accuracy", "multilabel")
    compute = {
        "f1": lambda: f1.compute(**args, average="macro")["f1"],
        "f1_micro": lambda: f1.compute(**args, average="micro")["f1"],
        "accuracy": lambda: accuracy.compute(**args)["accuracy"],
    }
    return {name: float(compute[name]()) for name in names}


def _binary_cross_entropy(logits, targets, pos_weight):
    weight = pos_weight.to(logits.device) if pos_weight is not None else None
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)


def _label_sets(ds: datasets.Dataset, spec: TargetSpec, where: str) -> list[set[str]]:
    """Each row's set of label names (as strings), from lists or separated strings."""
    column, separator = spec.column, spec.separator
    feature = ds.features[column]
    is_list = isinstance(feature, (datasets.Sequence, datasets.List, list, datasets.LargeList))
    if not is_list and separator is None:
        raise SftError(
            f"column '{column}' of {where} holds {feature_kind(feature)}, not lists of labels; "
            f"for multi_label give a list column, set data.label_separator=<the character "
            f"between labels, e.g. ','>, or give one 0/1 column per label with "
            f"data.label_columns"
        )
    sets = []
    for row, value in enumerate(column_values(ds, column)):
        if empty(value):
            sets.append(set())  # no labels: a row can have none
        elif isinstance(value, list):
            sets.append({str(v) for v in value if not empty(v)})
        elif isinstance(value, str) and separator is not None:
            sets.append({part.strip() for part in value.split(separator) if part.strip()})
        else:
            raise SftError(
                f"row {row + 1} of {where}, column '{column}': {value!r} is not a list of "
                f"labels; give lists, or strings of labels joined by data.label_separator"
            )
    return sets


def _indicator_columns(names: list[str], ds: datasets.Dataset, where: str) -> np.ndarray:
    """One 0/1 column per label, named as the label."""
    hot = np.zeros((len(ds), len(names)), dtype=np.float32)
    for j, column in enumerate(names):
        for row, value in enumerate(filled_values(ds, column, where)):
            if value not in (0, 1):  # True and False compare equal to 1 and 0
                raise SftError(
                    f"row {row + 1} of {where}, column '{column}': {value!r} is not 0 or 1; "
                    f"data.label_columns name one 0/1 column per label"
                )
            hot[row, j] = float(value)
    return hot
