"""The training state: where a run stands (`Progress`), its best validation result so far
(`Best`), and one evaluation's numbers (`Evaluation`). The loop updates it; checkpoints save and
restore it (sft/checkpoint.py), so neither needs the other."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Evaluation:
    loss: float
    predictions: np.ndarray
    references: np.ndarray
    scores: dict[str, float]  # accuracy, f1


@dataclass
class Best:
    """The best validation result so far, by one metric, with a CPU copy of its weights."""

    metric: str
    score: tuple[float, float] = (-math.inf, -math.inf)  # (metric, -loss): loss breaks ties
    step: int = 0
    state: dict[str, torch.Tensor] | None = None
    evaluation: Evaluation | None = None  # the validation result of `state`
    evals_since: int = 0  # evaluations since the last improvement (for early stopping)

    def update(self, evaluation: Evaluation, step: int, model: torch.nn.Module) -> bool:
        # Accuracy and F1 plateau at equal values on small validation sets; among equals the
        # lower loss is the more confident (better calibrated) model.
        metric = -evaluation.loss if self.metric == "loss" else evaluation.scores[self.metric]
        score = (metric, -evaluation.loss)
        # A diverged model (NaN loss) is never an improvement; NaN compares false both ways.
        if not math.isfinite(evaluation.loss) or score <= self.score:
            self.evals_since += 1
            return False
        self.score, self.step, self.evals_since = score, step, 0
        self.evaluation = evaluation
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        return True


@dataclass
class Progress:
    """Where training stands. With the weights, optimizer, scheduler and RNG states (which
    Accelerate saves) it is all a checkpoint needs to continue exactly (sft/checkpoint.py)."""

    best: Best
    step: int = 0  # optimizer steps taken
    epoch: int = 0
    batches: int = 0  # batches of `epoch` consumed (the data loader's position)
    seen: int = 0  # examples trained on, all processes together
    running_loss: list[torch.Tensor] = field(default_factory=list)  # since the last history row
    seconds: float = 0.0  # training time so far, validation included
    eval_seconds: float = 0.0

    def state_dict(self) -> dict:
        """Plain values and CPU tensors, for `torch.save`."""
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
                "score": best.score,
                "step": best.step,
                "evals_since": best.evals_since,
                "state": best.state,
                "evaluation": vars(best.evaluation) if best.evaluation is not None else None,
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict, metric: str, device: torch.device) -> Progress:
        b = state["best"]
        best = Best(
            metric,
            score=tuple(b["score"]),
            step=b["step"],
            state=b["state"],
            evaluation=Evaluation(**b["evaluation"]) if b["evaluation"] is not None else None,
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


@dataclass
class Outcome:
    steps: int
    best: Best
    train_seconds: float
    preempted: bool = False  # stopped by `should_stop` after a checkpoint, to be resumed
