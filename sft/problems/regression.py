"""Numbers per example, predicted as they are; optionally learnt standardised, with the scale
folded back into the saved output layer. Targets: `data.label_column` (one number per row), or
`data.label_columns` (several)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F

from sft.config import LossConfig
from sft.data.targets import Encoder, TargetSpec, filled_values
from sft.errors import SftError
from sft.problems import metrics
from sft.problems.base import CardMetric, Loss, Mistake, Problem
from sft.problems.head import output_layer

log = logging.getLogger(__name__)

# metrics.json key -> the metric module computing it (and its result key)
MODULES = {"mse": "mse", "mae": "mae", "r2": "r_squared", "pearson": "pearsonr",
           "spearman": "spearmanr"}  # fmt: skip


class Regression(Problem):
    """One or more numbers per example, predicted as they are (no squashing). Once `fitted`
    with standardisation, the model learns each target as (value - mean) / std of the train
    split; predictions are scaled back, and `bake_into` folds the scale into the saved output
    layer, so the saved model predicts the values themselves."""

    name, problem_type = "regression", "regression"
    metrics = ("mse", "mae", "r2", "pearson", "spearman")
    metric_modules = tuple((m, config) for m in MODULES.values() for config in (None, "multilist"))
    card_metrics = (
        CardMetric("mse", "mse", "MSE"),
        CardMetric("mae", "mae", "MAE"),
        CardMetric("r2", "r_squared", "R²"),
        CardMetric("pearson", "pearsonr", "Pearson"),
        CardMetric("spearman", "spearmanr", "Spearman"),
    )
    settings = ("loss.regression", "data.standardize_targets")
    tag = "regression"
    usage_note = (
        "Each score is a predicted value (config.json's `problem_type` is regression, so the "
        "pipeline applies no function to the outputs).\n\n"
    )

    def __init__(self, mean: np.ndarray | None = None, std: np.ndarray | None = None):
        self.mean, self.std = mean, std

    # -- targets -----------------------------------------------------------------------------
    def target_names(self, train, spec, where) -> list[str]:
        return list(spec.sources)

    def target_encoder(self, spec: TargetSpec, names: list[str]) -> Encoder:
        if len(spec.sources) != len(names):
            raise SftError(
                f"the model predicts {len(names)} target(s) {names}, but {spec.key} names "
                f"{len(spec.sources)}: {list(spec.sources)}; name one column per target"
            )
        columns = list(spec.sources)

        def encode(ds: datasets.Dataset, where: str) -> np.ndarray:
            out = np.zeros((len(ds), len(columns)), dtype=np.float32)
            for j, column in enumerate(columns):
                for row, value in enumerate(filled_values(ds, column, where)):
                    out[row, j] = _number(value, row, column, where)
            return out

        return encode

    # -- training and scores -----------------------------------------------------------------
    def fitted(self, train_targets, model, standardize):
        if not standardize:
            return self
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
            layer = output_layer(model, len(self.mean), "data.standardize_targets=false")
            std, mean = (
                torch.as_tensor(a, dtype=layer.weight.dtype) for a in (self.std, self.mean)
            )
            with torch.no_grad():  # w·x + b, scaled back: (w·x + b)·std + mean
                layer.weight.mul_(std[:, None].to(layer.weight.device))
                layer.bias.mul_(std.to(layer.bias.device)).add_(mean.to(layer.bias.device))
        super().bake_into(model, tuned)

    # -- what users see ----------------------------------------------------------------------
    COVERAGE = 0.9  # of the intervals sft.predict gives

    def interval(self, validation) -> dict[str, Any]:
        """Split-conformal intervals: per target, the half-width q that the validation
        residuals |y - ŷ| stay within at the ⌈(n + 1)·0.9⌉-th smallest, so that value ± q holds
        a new example's target with probability ≥ 0.9 where the new data resemble validation
        (exchangeable), whatever the model. Too small a validation split for that: none."""
        n = len(validation.references)
        k = math.ceil((n + 1) * self.COVERAGE)
        if k > n:
            log.warning("no prediction interval: %d validation examples are too few for %g", n,
                        self.COVERAGE)  # fmt: skip
            return {}
        truth, predicted = _columns(validation)
        residual = np.abs(predicted - truth)
        return {
            "interval_coverage": self.COVERAGE,
            "interval_half_width": np.sort(residual, axis=0)[k - 1].tolist(),
        }

    def final_report(self, final, validation, labels, split, tuned) -> dict[str, Any]:
        """With an interval: the share of `split`'s targets that fall inside it."""
        report = super().final_report(final, validation, labels, split, tuned)
        if "interval_half_width" in tuned:
            truth, predicted = _columns(final)
            inside = np.abs(predicted - truth) <= np.asarray(tuned["interval_half_width"])
            report["interval_covered"] = float(inside.mean())
        return report

    def prediction(self, scores, config, top_k) -> dict[str, Any]:
        """Each target's value, in the model's order, and its interval where the model has one
        (`<target>_low`, `<target>_high`)."""
        value = {s["label"]: s["score"] for s in scores}
        row = {label: value[label] for label in config.id2label.values()}
        half = getattr(config, "interval_half_width", None)
        for label, q in zip(list(row), half or [], strict=False):
            row[f"{label}_low"], row[f"{label}_high"] = row[label] - q, row[label] + q
        return row

    def describes(self, results) -> str:
        said = f"It predicts {', '.join(results['labels'])} (the model's outputs are the values)."
        if "interval_half_width" in results:
            half = ", ".join(f"{q:.4g}" for q in results["interval_half_width"])
            said += (
                f" `sft.predict` gives each value a {results['interval_coverage']:.0%} interval, "
                f"± {half} (split-conformal, from the validation residuals)"
            )
            if "interval_covered" in results:
                said += f"; it held {results['interval_covered']:.1%} of the test targets"
            said += "."
        return said

    def kind(self, task_kind: str) -> str:
        return task_kind.replace("classification", "regression")

    mistakes_title, mistake_score = "Largest residuals", "|residual|"

    def mistakes(self, evaluation, labels) -> list[Mistake]:
        """Every example, by its largest residual (several targets: each in units of that
        target's spread over the split, so no target dominates by its scale)."""
        truth, predicted = _columns(evaluation)
        residual = np.abs(predicted - truth)
        if truth.shape[1] > 1:
            spread = truth.std(0)
            residual = residual / np.where(spread > 0, spread, 1.0)

        def values(row: np.ndarray) -> str:
            if len(row) == 1:
                return f"{row[0]:.4g}"
            return ", ".join(f"{name} {v:.4g}" for name, v in zip(labels, row, strict=True))

        found = [
            Mistake(i, values(truth[i]), values(predicted[i]), float(residual[i].max()))
            for i in range(len(truth))
        ]
        return sorted(found, key=lambda m: -m.score)

    def worst_first(self, results) -> tuple[list[str], list[list[str]]]:
        header, rows = self.per_label_table(results)
        return header, sorted(rows, key=lambda row: float(row[header.index("R²")]))

    def per_label_table(self, results) -> tuple[list[str], list[list[str]]]:
        keys = ("mse", "mae", "r2", "pearson")
        targets = results.get("per_target", {})
        rows = [[n, *(f"{t[k]:.4f}" for k in keys)] for n, t in targets.items()]
        return ["target", "MSE", "MAE", "R²", "Pearson"], rows

    def plot_outcome(self, report, evaluation, title, out) -> Path:
        from sft.problems import plots  # matplotlib: only when drawing

        return plots.plot_predicted(
            evaluation.predictions,
            evaluation.references,
            report["labels"],
            title,
            out / "predicted.png",
        )

    def scores(self, predictions, references) -> dict[str, float]:
        """MSE, MAE, R², Pearson and Spearman; averaged over targets where there are several."""
        several = predictions.ndim == 2 and predictions.shape[1] > 1
        if not several:
            predictions, references = predictions.reshape(-1), references.reshape(-1)
        config = "multilist" if several else None
        args = {"predictions": predictions.tolist(), "references": references.tolist()}
        return {
            key: float(metrics.module(m, config).compute(**args)[m]) for key, m in MODULES.items()
        }

    def report(self, predictions, references, labels) -> dict[str, Any]:
        """`scores`, and the same per target when there are several."""
        report = {**self.scores(predictions, references), "num_examples": len(references)}
        if len(labels) > 1:
            report["per_target"] = {
                name: self.scores(predictions[:, j], references[:, j])
                for j, name in enumerate(labels)
            }
        report["labels"] = labels
        undefined = [k for k in self.metrics if report[k] != report[k]]
        if undefined:
            log.warning(
                "%s undefined (NaN, written as null): the predictions or the targets are constant",
                ", ".join(undefined),
            )
        if self.mean is not None:
            report["standardized_targets"] = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        return report


def _number(value, row: int, column: str, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise SftError(
            f"row {row + 1} of {where}, column '{column}': {value!r} is not a number; "
            f"regression targets must parse as floats (fix or drop the row)"
        ) from None
    if not np.isfinite(number):
        raise SftError(f"row {row + 1} of {where}, column '{column}': {value!r} is not finite")
    return number


def _columns(evaluation) -> tuple[np.ndarray, np.ndarray]:
    """The true and the predicted values of `evaluation`, one row per example and one column
    per target (a single target too)."""
    n = len(evaluation.references)
    truth = np.asarray(evaluation.references, dtype=np.float64).reshape(n, -1)
    return truth, np.asarray(evaluation.predictions, dtype=np.float64).reshape(n, -1)
