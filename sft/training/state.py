"""The training state: where a run stands (`Progress`), its best validation result so far
(`Best`), and one evaluation's numbers (`Evaluation`). The loop updates it; checkpoints save and
restore it (sft/training/checkpoint.py), so neither needs the other."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from sft.problems.metrics import better


@dataclass
class Evaluation:
    loss: float
    predictions: np.ndarray
    references: np.ndarray
    scores: dict[str, float]  # by problem (sft/problems/): accuracy, f1, mse, ...
    logits: np.ndarray | None = None  # the model's outputs; not kept in checkpoints
    calibration: dict | None = None  # before/after calibration (sft/problems/calibration.py)


@dataclass
class Best:
    """The best validation result so far, by one metric, with a CPU copy of its weights: the
    end of the run evaluates and saves them, and the model has trained on since. Kept in memory
    because checkpoints may be off (`keep_checkpoints=0`); checkpoints store it once on disk
    (sft/training/checkpoint.py)."""

    metric: str
    score: tuple[float, float] = (-math.inf, -math.inf)  # (metric, -loss): loss breaks ties
    step: int = 0
    state: dict[str, torch.Tensor] | None = None
    evaluation: Evaluation | None = None  # the validation result of `state`
    evals_since: int = 0  # evaluations since the last improvement (for early stopping)

    def update(
        self, evaluation: Evaluation, step: int, weights: Callable[[], dict[str, torch.Tensor]]
    ) -> bool:
        """Keep `evaluation` if it is the best so far, with the weights `weights()` returns
        (called only then; every process decides alike, so a collective gather is safe)."""
        # Accuracy and F1 plateau at equal values on small validation sets; among equals the
        # lower loss is the more confident (better calibrated) model.
        value = evaluation.loss if self.metric == "loss" else evaluation.scores[self.metric]
        score = (better(self.metric, value), -evaluation.loss)
        # A diverged model (NaN loss) is never an improvement; NaN compares false both ways.
        if not math.isfinite(evaluation.loss) or score <= self.score:
            self.evals_since += 1
            return False
        self.score, self.step, self.evals_since = score, step, 0
        self.evaluation = evaluation
        self.state = cpu_copy(weights())
        return True


def cpu_copy(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights as CPU tensors of their own (contiguous, no storage shared: as safetensors
    writes them), unchanged by further training."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in weights.items()}


@dataclass
class Progress:
    """Where training stands. With the weights, optimizer, scheduler and RNG states it is all
    a checkpoint needs to continue exactly (sft/training/checkpoint.py)."""

    best: Best
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches: int = 0  # batches of `epoch` consumed (the data loader's position)
    seen: int = 0  # examples trained on, all processes together
    running_loss: list[torch.Tensor] = field(default_factory=list)  # since the last history row
    seconds: float = 0.0  # training time so far, validation included
    eval_seconds: float = 0.0

    def state_dict(self) -> dict:
        """Plain values, for JSON; the best weights are not in it (checkpoints store them)."""
        best = self.best
        return {
            "step": self.step,
            "epoch": self.epoch,
            "batches": self.batches,
            "seen": self.seen,
            "running_loss": [float(x) for x in self.running_loss],
            "seconds": self.seconds,
            "eval_seconds": self.eval_seconds,
            "best": {
                "score": list(best.score),
                "step": best.step,
                "evals_since": best.evals_since,
                "evaluation": _plain(best.evaluation),
            },
        }

    @classmethod
    def from_state_dict(
        cls,
        state: dict,
        metric: str,
        device: torch.device,
        best_state: dict[str, torch.Tensor] | None = None,
    ) -> Progress:
        """The inverse of `state_dict`, with the best weights `best_state`."""
        b = state["best"]
        best = Best(
            metric,
            score=tuple(-math.inf if v is None else v for v in b["score"]),  # strict JSON
            step=b["step"],
            state=best_state,
            evaluation=_from_plain(b["evaluation"]),
            evals_since=b["evals_since"],
        )
        return cls(
            best=best,
            step=state["step"],
            epoch=state["epoch"],
            batches=state["batches"],
            seen=state["seen"],
            running_loss=[torch.tensor(x, device=device) for x in state["running_loss"]],
            seconds=state["seconds"],
            eval_seconds=state["eval_seconds"],
        )


def _plain(e: Evaluation | None) -> dict | None:
    if e is None:
        return None
    return {
        "loss": e.loss,
        "predictions": e.predictions.tolist(),
        "references": e.references.tolist(),
        "scores": e.scores,
    }


def _from_plain(e: dict | None) -> Evaluation | None:
    if e is None:
        return None
    scores = {k: math.nan if v is None else v for k, v in e["scores"].items()}  # strict JSON
    loss = math.nan if e["loss"] is None else e["loss"]
    return Evaluation(loss, np.asarray(e["predictions"]), np.asarray(e["references"]), scores)


@dataclass
class Outcome:
    steps: int
    best: Best
    train_seconds: float
    preempted: bool = False  # stopped by `should_stop` after a checkpoint, to be resumed
    startup_seconds: float | None = None  # from this process's start to its first step's end

    def timings(self) -> dict[str, float | None]:
        """For metrics.json: training time (validation included) and start-up, in seconds."""
        return {
            "train_seconds": round(self.train_seconds, 1),
            "startup_seconds": self.startup_seconds,
        }
