"""Numbers per example, predicted as they are; optionally learnt standardised, with the scale
folded back into the saved output layer."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sft import metrics
from sft.config import LossConfig
from sft.problems.base import Loss, Problem


class Regression(Problem):
    """One or more numbers per example, predicted as they are (no squashing). Once `fitted`
    with standardisation, the model learns each target as (value - mean) / std of the train
    split; predictions are scaled back, and `bake_into` folds the scale into the saved output
    layer, so the saved model predicts the values themselves."""

    name, problem_type = "regression", "regression"
    metrics = ("mse", "mae", "r2", "pearson", "spearman")

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        self.mean, self.std = mean, std

    def fitted(self, train_targets, model, standardize):
        if not standardize:
            return self
        from sft.model import output_layer

        output_layer(model, train_targets.shape[1], "data.standardize_targets=false")
        targets = np.asarray(train_targets, dtype=np.float64)
        std = targets.std(0)
        std[std == 0] = 1.0  # a constant target: nothing to scale
        return Regression(targets.mean(0).astype(np.float32), std.astype(np.float32))

    def _standardized(self, targets: torch.Tensor) -> torch.Tensor:
        if self.mean is None:
            return targets.float()
        mean, std = (torch.as_tensor(a, device=targets.device) for a in (self.mean, self.std))
        return (targets.float() - mean) / std

    def loss(self, cfg: LossConfig, train_targets: np.ndarray, num_labels: int) -> Loss:
        fn = F.huber_loss if cfg.regression == "huber" else F.mse_loss
        return lambda outputs, targets: fn(outputs.float(), self._standardized(targets))

    def eval_loss(self, logits, targets) -> float:
        return F.mse_loss(logits.float(), self._standardized(targets)).item()

    def predict(self, logits) -> np.ndarray:
        values = logits.float().numpy()
        return values if self.mean is None else values * self.std + self.mean

    def bake_into(self, model: torch.nn.Module, tuned: dict[str, float]) -> None:
        if self.mean is not None:
            from sft.model import output_layer

            layer = output_layer(model, len(self.mean), "data.standardize_targets=false")
            std, mean = (
                torch.as_tensor(a, dtype=layer.weight.dtype) for a in (self.std, self.mean)
            )
            with torch.no_grad():  # w·x + b, scaled back: (w·x + b)·std + mean
                layer.weight.mul_(std[:, None].to(layer.weight.device))
                layer.bias.mul_(std.to(layer.bias.device)).add_(mean.to(layer.bias.device))
        super().bake_into(model, tuned)

    def prediction(self, scores, config, top_k) -> dict[str, Any]:
        """Each target's value, in the model's order."""
        value = {s["label"]: s["score"] for s in scores}
        return {label: value[label] for label in config.id2label.values()}

    def describes(self, results) -> str:
        return f"It predicts {', '.join(results['labels'])} (the model's outputs are the values)."

    def scores(self, predictions, references) -> dict[str, float]:
        return metrics.regression_scores(predictions, references)

    def report(self, predictions, references, labels) -> dict[str, Any]:
        report = metrics.regression_report(predictions, references, labels)
        if self.mean is not None:
            report["standardized_targets"] = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        return report
