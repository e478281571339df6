"""Any number of labels per example: a sigmoid score per label, each predicted above one
threshold tuned on validation."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from sft import metrics
from sft.config import LossConfig
from sft.errors import SftError
from sft.metrics import MULTI_LABEL_HEADLINE
from sft.problems.base import Loss, Problem

if TYPE_CHECKING:
    from sft.state import Evaluation


class MultiLabel(Problem):
    """Independent yes/no per label: sigmoid scores, a label predicted above one threshold,
    tuned on validation at every evaluation (`tune`; 0.5 before any)."""

    name, problem_type = "multi_label", "multi_label_classification"
    metrics = MULTI_LABEL_HEADLINE
    tunes = True
    THRESHOLD = 0.5  # before any tuning, and for a saved model that carries none
    # The thresholds tried on validation: steps of 0.05, and finer in the tails, where weighted
    # positives (loss.pos_weight=auto) or very rare labels put the best one (0.95 was the top
    # and the choice of the first debtags run with pos_weight).
    GRID = np.round(np.r_[0.01, 0.02, 0.03, np.arange(0.05, 0.951, 0.05), 0.97, 0.98, 0.99], 2)

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
            score = metrics.multi_label_headline(predictions, refs, (metric,))[metric]
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
        return metrics.multi_label_headline(predictions, references.astype(np.int64))

    def report(self, predictions, references, labels) -> dict[str, Any]:
        return metrics.multi_label_report(predictions, references.astype(np.int64), labels)


def _binary_cross_entropy(logits, targets, pos_weight):
    weight = pos_weight.to(logits.device) if pos_weight is not None else None
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)
