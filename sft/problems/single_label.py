"""One label per example: softmax over the labels, the argmax predicted."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch.nn.functional as F

from sft import metrics
from sft.config import LossConfig
from sft.problems.base import Loss, Problem


class SingleLabel(Problem):
    name, problem_type = "single_label", "single_label_classification"
    metrics = ("f1", "accuracy")
    needs_every_score = False  # the top k are enough

    def loss(self, cfg: LossConfig, train_targets: np.ndarray, num_labels: int) -> Loss:
        from sft.loss import class_weights, cross_entropy

        weights = class_weights(cfg.class_weights, train_targets, num_labels)
        return cross_entropy(weights, cfg.label_smoothing)

    def eval_loss(self, logits, targets) -> float:
        return F.cross_entropy(logits, targets).item()

    def predict(self, logits) -> np.ndarray:
        return logits.argmax(-1).numpy()

    def scores(self, predictions, references) -> dict[str, float]:
        return metrics.headline(predictions, references)

    def report(self, predictions, references, labels) -> dict[str, Any]:
        return metrics.report(predictions, references, labels)

    def prediction(self, scores, config, top_k) -> dict[str, Any]:
        top = sorted(scores, key=lambda s: -s["score"])[:top_k]
        return {"label": top[0]["label"], "score": top[0]["score"], "top_k": top}

    def describes(self, results) -> str:
        return f"{len(results['labels'])} labels: {', '.join(results['labels'])}."
