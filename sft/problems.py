"""What a run predicts (`problem`): one label per example (single_label), any number of labels
(multi_label), or numbers (regression). A `Problem` owns what differs between them: the training
loss, how logits become predictions, the scores (computed through `evaluate`, sft/metrics.py)
and which way each is better. What a target is in the data: sft/data/targets.py."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from sft import metrics
from sft.config import LossConfig
from sft.errors import SftError
from sft.metrics import MULTI_LABEL_HEADLINE

if TYPE_CHECKING:
    from sft.state import Evaluation

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOWER_IS_BETTER = {"loss", "mse", "mae"}


class Problem:
    name: str
    problem_type: str  # transformers' `config.problem_type`: pipelines score by it
    metrics: tuple[str, ...]  # what `trainer.metric` may name besides loss; the first: default

    tunes = False  # whether `tune` learns anything from validation outputs

    def metric(self, requested: str) -> str:
        """`trainer.metric`, with auto resolved to this problem's default."""
        return self.metrics[0] if requested == "auto" else requested

    def tune(self, validation: Evaluation, metric: str) -> dict[str, float]:
        """The decision rule, tuned on the validation outputs to maximise `metric`: saved in
        metrics.json and the model config, applied to every final score and prediction."""
        return {}

    def apply(self, evaluation: Evaluation, tuned: dict[str, float]) -> Evaluation:
        """`evaluation` rescored under the tuned rule."""
        return evaluation

    def saved_rule(self, config: Any) -> dict[str, float]:
        """The tuned rule a saved model's config carries (what `tune` returned)."""
        return {}

    def fitted(self, train_targets: np.ndarray, model: torch.nn.Module, standardize: bool):
        """This problem for a run of `model` on `train_targets` (regression: their scale, when
        `data.standardize_targets`; refused now, before training, if `bake_into` could not
        fold it into the model)."""
        return self

    def bake_into(self, model: torch.nn.Module, tuned: dict[str, float]) -> None:
        """Make the trained `model` carry what a saved model must: the tuned rule in its
        config (and, for standardised regression, the target scale in its output layer)."""
        model.config.update(tuned)

    def head_bias(self, cfg: LossConfig, train_targets: np.ndarray) -> np.ndarray | None:
        """Where a new head's output bias starts (None: where the model puts it)."""
        return None

    def loss(self, cfg: LossConfig, train_targets: np.ndarray, num_labels: int) -> Loss:
        """The training loss, loss(logits, targets) -> scalar, for these train targets."""
        raise NotImplementedError

    def eval_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> float:
        """The unweighted loss reported for an evaluation."""
        raise NotImplementedError

    def predict(self, logits: torch.Tensor) -> np.ndarray:
        raise NotImplementedError

    def scores(self, predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        """Every metric `trainer.metric` may name (loss aside)."""
        raise NotImplementedError

    def report(
        self, predictions: np.ndarray, references: np.ndarray, labels: list[str]
    ) -> dict[str, Any]:
        """metrics.json's scores: `scores` plus the per-label detail."""
        raise NotImplementedError

    def final_report(
        self,
        final: Evaluation,
        validation: Evaluation,
        labels: list[str],
        split: str,
        tuned: dict[str, float],
    ) -> dict[str, Any]:
        """metrics.json's scores: the `report` of the final evaluation on `split`, its loss,
        the best checkpoint's validation scores and the rule tuned on them (`tune`)."""
        return {
            "problem": self.name,
            "split": split,
            **self.report(final.predictions, final.references, labels),
            "loss": final.loss,
            "validation": {"loss": validation.loss, **validation.scores},
            **tuned,
        }


class SingleLabel(Problem):
    name, problem_type = "single_label", "single_label_classification"
    metrics = ("f1", "accuracy")

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


class MultiLabel(Problem):
    """Independent yes/no per label: sigmoid scores, a label predicted above one threshold,
    tuned on validation at every evaluation (`tune`; 0.5 before any)."""

    name, problem_type = "multi_label", "multi_label_classification"
    metrics = MULTI_LABEL_HEADLINE
    tunes = True
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

    def predict(self, logits, threshold: float = 0.5) -> np.ndarray:
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
        return {"multi_label_threshold": getattr(config, "multi_label_threshold", 0.5)}

    def apply(self, evaluation: Evaluation, tuned: dict[str, float]) -> Evaluation:
        predictions = self.predict(evaluation.logits, tuned["multi_label_threshold"])
        scores = self.scores(predictions, evaluation.references)
        return dataclasses.replace(evaluation, predictions=predictions, scores=scores)

    def scores(self, predictions, references) -> dict[str, float]:
        return metrics.multi_label_headline(predictions, references.astype(np.int64))

    def report(self, predictions, references, labels) -> dict[str, Any]:
        return metrics.multi_label_report(predictions, references.astype(np.int64), labels)


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

    def scores(self, predictions, references) -> dict[str, float]:
        return metrics.regression_scores(predictions, references)

    def report(self, predictions, references, labels) -> dict[str, Any]:
        report = metrics.regression_report(predictions, references, labels)
        if self.mean is not None:
            report["standardized_targets"] = {"mean": self.mean.tolist(), "std": self.std.tolist()}
        return report


def _binary_cross_entropy(logits, targets, pos_weight):
    weight = pos_weight.to(logits.device) if pos_weight is not None else None
    return F.binary_cross_entropy_with_logits(logits.float(), targets.float(), pos_weight=weight)


PROBLEMS: dict[str, Problem] = {p.name: p for p in (SingleLabel(), MultiLabel(), Regression())}


def of_model(config: Any) -> Problem:
    """The problem a transformers model config's `problem_type` names (single-label if none)."""
    by_type = {p.problem_type: p for p in PROBLEMS.values()}
    return by_type.get(config.problem_type or "", PROBLEMS["single_label"])


def get(name: str) -> Problem:
    """The problem `name` names; validation.py has refused any other."""
    return PROBLEMS[name]


def better(metric: str, value: float) -> float:
    """`value` turned so that larger is better (loss, mse, mae are better smaller); an undefined
    score (NaN: a correlation of constant predictions) is the worst."""
    if value != value:
        return -math.inf
    return -value if metric in LOWER_IS_BETTER else value


def summary(result: dict[str, Any]) -> str:
    """One line on a finished run's metrics.json: its final scores, examples, steps, time."""
    scores = ", ".join(f"{k} {result[k]:.4f}" for k in result["validation"] if k != "loss")
    return (
        f"{result['split']}: {scores} on {result['num_examples']} examples; trained "
        f"{result['steps']} steps in {result['train_seconds']:.0f} s"
        + (f" ({result['precision']})" if "precision" in result else "")
    )
