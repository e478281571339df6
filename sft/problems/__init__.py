"""What a run predicts (`problem`): one label per example (single_label), any number of labels
(multi_label), or numbers (regression). A `Problem` (base.py) owns what differs between them:
what a target is in the data, the training loss, how logits become predictions, the scores
(computed through `evaluate`: metrics.py), the decision rule tuned on validation, what a saved
model carries, the plot of an evaluation (plots.py draws it) and the model card's rows; one
module per type, registered here. Outside this package only the config schema and its
validation name a problem: everything else asks this registry."""

from __future__ import annotations

from typing import Any

from sft.config import Config
from sft.problems.base import CardMetric, Loss, Problem
from sft.problems.multi_label import MultiLabel
from sft.problems.regression import Regression
from sft.problems.single_label import SingleLabel

__all__ = ["PROBLEMS", "CardMetric", "Loss", "Problem", "get", "of_model", "summary"]

PROBLEMS: dict[str, Problem] = {p.name: p for p in (SingleLabel(), MultiLabel(), Regression())}


def of_model(config: Any) -> Problem:
    """The problem a transformers model config's `problem_type` names (single-label if none)."""
    by_type = {p.problem_type: p for p in PROBLEMS.values()}
    return by_type.get(config.problem_type or "", get())


def get(name: str | None = None) -> Problem:
    """The problem `name` names (validation.py has refused any other); None: the config's
    default, as for runs recorded before sft wrote the problem down."""
    return PROBLEMS[name or Config.problem]


def summary(result: dict[str, Any]) -> str:
    """One line on a finished run's metrics.json: its final scores, examples, steps, time."""
    scores = ", ".join(f"{k} {result[k]:.4f}" for k in result["validation"] if k != "loss")
    return (
        f"{result['split']}: {scores} on {result['num_examples']} examples; trained "
        f"{result['steps']} steps in {result['train_seconds']:.0f} s"
        + (f" ({result['precision']})" if "precision" in result else "")
    )
