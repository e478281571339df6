"""What every problem type answers (`Problem`): the training loss, how logits become
predictions, the scores and the decision rule tuned on validation. The types: one module each
beside this one, registered in sft/problems/__init__.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sft.config import LossConfig

if TYPE_CHECKING:
    from sft.state import Evaluation

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Problem:
    name: str
    problem_type: str  # transformers' `config.problem_type`: pipelines score by it
    metrics: tuple[str, ...]  # what `trainer.metric` may name besides loss; the first: default

    tunes = False  # whether `tune` learns anything from validation outputs
    needs_every_score = True  # whether sft.predict asks the pipeline for every label's score

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

    def prediction(self, scores: list[dict], config: Any, top_k: int) -> dict[str, Any]:
        """sft.predict's row for one input (after its `input`), from the pipeline's
        [{label, score}, ...] and the saved model's config (its tuned rule)."""
        raise NotImplementedError

    def describes(self, results: dict[str, Any]) -> str:
        """The model card's sentence on what the model predicts, from the run's metrics.json."""
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
