"""What every problem type answers (`Problem`): what a target is in the data, the training
loss, how logits become predictions, the scores and the decision rule tuned on validation, the
plot of an evaluation and the model card's rows. The types: one module each beside this one,
registered in sft/problems/__init__.py."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from sft.config import LossConfig
from sft.data.targets import Encoder, TargetSpec
from sft.problems import calibration, metrics
from sft.problems.head import output_layer

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import datasets

    from sft.training.state import Evaluation

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class CardMetric(NamedTuple):
    """A score the model card reports, and how the Hub's model-index names it."""

    key: str  # in metrics.json
    hub_type: str  # the Hub metric's id
    name: str  # as the card shows it
    args: dict | None = None


class Mistake(NamedTuple):
    """One wrong prediction, as the error-analysis report lists it (sft/reporting)."""

    row: int  # its row in the evaluation's outputs
    truth: str
    predicted: str
    score: float  # how wrong, by the problem's `mistake_score`: the list is sorted by it


class Problem:
    name: str
    problem_type: str  # transformers' `config.problem_type`: pipelines score by it
    metrics: tuple[str, ...]  # what `trainer.metric` may name besides loss; the first: default

    metric_modules: tuple[tuple[str, str | None], ...]  # the (evaluate module, config) pairs
    card_metrics: tuple[CardMetric, ...]  # what the model card reports, in its order
    settings: tuple[str, ...] = ()  # config keys only this problem reads (the card shows them)
    tag: str | None = None  # the Hub tag beside the task's

    tunes = False  # whether `tune` learns anything from validation outputs
    needs_every_score = True  # whether sft.predict asks the pipeline for every label's score
    stratifies = False  # whether held-out splits keep each class's share of train
    # The card's usage example: what the pipeline call adds, and what its scores are.
    pipeline_args = ", top_k=None"
    usage_note = ""

    def load_metrics(self) -> None:
        """Import `evaluate` and load the modules this problem's scores use, now rather than
        at the first evaluation: callers that time evaluations time the work, not this."""
        for name, config in self.metric_modules:
            metrics.module(name, config)

    # -- targets (sft/data/targets.py reads each split through these) ----------------------
    def target_names(self, train: datasets.Dataset, spec: TargetSpec, where: str) -> list[str]:
        """The label (or target) names that the train split's targets define, checked."""
        raise NotImplementedError

    def target_encoder(self, spec: TargetSpec, names: list[str]) -> Encoder:
        """encode(split, where) -> the split's targets as an array, for a model of `names`:
        an SftError names the row, column and value that cannot be one."""
        raise NotImplementedError

    def unlabelled(self, ds: datasets.Dataset, spec: TargetSpec) -> bool:
        """Whether `ds` hides its targets (as GLUE's test splits do): left out, not an error."""
        return False

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

    # -- calibration (sft/problems/calibration.py) --------------------------------------------
    calibrates = False  # whether its outputs are probabilities a temperature can calibrate

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """What the model's outputs mean as probabilities (softmax, sigmoid)."""
        raise NotImplementedError

    def calibrated(self, evaluation: Evaluation) -> tuple[Evaluation, float]:
        """`evaluation` (validation: the best checkpoint's) with its logits divided by the
        temperature that minimises their NLL, and that temperature; its `calibration` holds
        ECE, NLL and Brier score before and after."""
        if self._separated(evaluation):
            # NLL falls toward 0 as T does: validation has no mistake to weigh confidence by
            # (a small or easy split), and a tiny T would only make the model surer. Keep it.
            log.warning("calibration: validation is separated perfectly; temperature kept at 1")
            return self.scaled(evaluation, 1.0), 1.0
        temperature = calibration.fit_temperature(
            evaluation.logits, partial(self._nll, evaluation.references)
        )
        return self.scaled(evaluation, temperature), temperature

    def scaled(self, evaluation: Evaluation, temperature: float) -> Evaluation:
        """`evaluation` as the model with its output layer divided by `temperature` gives it."""
        logits = torch.as_tensor(evaluation.logits) / temperature
        targets = torch.as_tensor(evaluation.references)
        before = self._calibration_scores(evaluation.logits, evaluation.references)
        after = self._calibration_scores(logits.numpy(), evaluation.references)
        predictions = self.predict(logits)
        return dataclasses.replace(
            evaluation,
            logits=logits.numpy(),
            loss=self.eval_loss(logits, targets),
            predictions=predictions,
            scores=self.scores(predictions, evaluation.references),
            calibration={"before": before, "after": after},
        )

    def _nll(self, references: np.ndarray, logits: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _separated(self, evaluation: Evaluation) -> bool:
        """Whether every output already falls on the right side (no temperature is best)."""
        raise NotImplementedError

    def _calibration_scores(self, logits: np.ndarray, references: np.ndarray) -> dict:
        """ECE (15 bins), NLL and Brier score of `logits` against `references`, and the
        reliability diagram's bins."""
        raise NotImplementedError

    def interval(self, validation: Evaluation) -> dict[str, Any]:
        """What the saved model's config and metrics.json carry to give each prediction an
        interval, from the validation outputs (regression); {}: no interval."""
        return {}

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
        config, the calibration temperature folded into its output layer (W/T, b/T: every
        user of the saved model gets calibrated scores), and for standardised regression the
        target scale."""
        temperature = tuned.get("calibration_temperature", 1.0)
        if temperature != 1.0:
            layer = output_layer(model, model.config.num_labels, "calibration=none")
            with torch.no_grad():
                layer.weight.div_(temperature)
                layer.bias.div_(temperature)
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

    def kind(self, task_kind: str) -> str:
        """What the card calls the model: 'text classification' for single-label."""
        return task_kind

    def per_label_table(self, results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        """The card's per-label table (header, rows) from metrics.json; no rows: none."""
        rows = [
            [n, *(f"{c[k]:.4f}" for k in ("precision", "recall", "f1")), str(c["support"])]
            for n, c in results["per_class"].items()
        ]
        return ["label", "precision", "recall", "F1", "support"], rows

    # -- the error-analysis report (sft/reporting) -------------------------------------------
    mistakes_title = "Most confident mistakes"
    mistake_score = "probability"  # what `Mistake.score` is, as the report's column says

    def mistakes(self, evaluation: Evaluation, labels: list[str]) -> list[Mistake]:
        """Every wrong prediction of `evaluation`, the most confident (or largest) first."""
        raise NotImplementedError

    def worst_first(self, report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
        """The report's per-label table (header, rows) from metrics.json, worst label first."""
        header, rows = self.per_label_table(report)
        f1 = header.index("F1")
        return header, sorted(rows, key=lambda row: float(row[f1]))

    def plot_calibration(self, report: dict, out: Path) -> Path | None:
        """reliability.png for the final split of a calibrated run (its metrics.json)."""
        calibrated = report.get("calibration", {}).get(report.get("split", ""))
        if not calibrated:
            return None
        from sft.problems import plots  # matplotlib: only when drawing

        title = f"{report['split']} reliability (T = {report['calibration_temperature']:.3g})"
        return plots.plot_reliability(calibrated, title, out / "reliability.png")

    def plot_outcome(self, report: dict, evaluation: Evaluation, title: str, out: Path) -> Path:
        """The plot of `evaluation` (`report`: its metrics.json) in folder `out`, as suits the
        problem (sft/problems/plots.py draws it)."""
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
        the best checkpoint's validation scores and the rule tuned on them (`tune`), and with a
        temperature, ECE, NLL and Brier score before and after calibration on both splits."""
        report = {
            "problem": self.name,
            "split": split,
            **self.report(final.predictions, final.references, labels),
            "loss": final.loss,
            "validation": {"loss": validation.loss, **validation.scores},
            **tuned,
        }
        if validation.calibration is not None:
            report["calibration"] = {"validation": validation.calibration}
            if final is not validation:
                report["calibration"][split] = final.calibration
        return report
