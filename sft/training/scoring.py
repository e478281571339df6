"""Running a model over a split and scoring what it outputs: `evaluate` (every example once
across processes; windows of long texts pooled per text), `scored` (outputs -> predictions,
loss and the problem's scores) and, once training ends, `final_evaluations` (the best weights on
validation and test, calibrated, the decision rule tuned). The loop (loop.py) evaluates through
it; sft.evaluate, sft.report and sft.export's int8 gate score through it."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sft.data import windows
from sft.data.windows import DOCUMENT
from sft.problems import Problem
from sft.training.finetune import train_mode
from sft.training.state import Evaluation, Outcome

if TYPE_CHECKING:
    from sft.training.loop import Parts

# One batch's outputs: logits, targets, and the numbers of the texts they are windows of (None:
# whole examples)
Outputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


def final_evaluations(
    parts: Parts,
    outcome: Outcome,
    test_loader: DataLoader | None,
    progress: bool = False,
    record: Callable[[dict], None] | None = None,
) -> tuple[Evaluation, Evaluation, dict]:
    """Load the best weights into the model; their validation result and the final one (on
    test when there is a test split, else validation again), both calibrated (`parts.calibrate`:
    a temperature fitted on validation) and scored with the decision rule tuned on validation
    after that (`problem.tune`: multi-label's threshold); the rule (and the temperature) too."""
    accelerator, model, problem = parts.accelerator, parts.model, parts.problem
    calibrate = parts.calibrate and problem.calibrates
    validation = outcome.best.evaluation
    if outcome.best.state is not None:
        # Whole weights into the module: it holds whole weights on every process, since
        # make_accelerator refuses sharding plugins.
        accelerator.unwrap_model(model).load_state_dict(outcome.best.state)
    if validation is None or ((problem.tunes or calibrate) and validation.logits is None):
        # No finite evaluation (the last weights, as they are), or one read from a checkpoint
        # without the outputs to tune on.
        validation = evaluate(accelerator, model, parts.eval_loader, problem, progress, parts.pool)
    tuned: dict = {}
    if calibrate:
        validation, tuned["calibration_temperature"] = problem.calibrated(validation)
    tuned |= problem.tune(validation, outcome.best.metric) | problem.interval(validation)
    validation = problem.apply(validation, tuned)
    splits = {"validation": validation}
    if test_loader is not None:
        test_loader = accelerator.prepare(test_loader)
        final = evaluate(accelerator, model, test_loader, problem, progress, parts.pool)
        if calibrate:
            final = problem.scaled(final, tuned["calibration_temperature"])
        splits["test"] = problem.apply(final, tuned)
    if calibrate and record is not None:  # the history's last row: what calibrating did
        record(_calibration_row(outcome.steps, tuned, splits))
    return validation, splits.get("test", validation), tuned


@torch.inference_mode()  # no autograd bookkeeping at all: ~4% quicker than no_grad on CPU
def evaluate(
    accelerator: Accelerator,
    model: torch.nn.Module,
    loader: DataLoader,
    problem: Problem,
    progress: bool = False,
    pool: str = "mean",
) -> Evaluation:
    """Loss, predictions and scores (as `problem` computes them) over every example of
    `loader`, each counted once across processes (`gather_for_metrics` drops the padding a
    distributed sampler adds); with a progress bar (rank 0) when `progress`. Windows of long
    texts (batches with DOCUMENT) are pooled into one output per text (`pool`: mean | max)."""
    show = progress and accelerator.is_main_process

    def gathered() -> Iterator[Outputs]:
        for batch in tqdm(loader, desc="evaluate", leave=False, disable=not show):
            text = (batch[DOCUMENT],) if DOCUMENT in batch else ()
            out = accelerator.gather_for_metrics((logits_of(model, batch), batch["labels"], *text))
            yield out[0], out[1], out[2] if text else None

    was_training = model.training
    model.eval()
    evaluation = scored(problem, gathered(), pool)
    if was_training:
        train_mode(model)
    return evaluation


def scored(problem: Problem, batches: Iterable[Outputs], pool: str = "mean") -> Evaluation:
    """The evaluation of a split from its batches' outputs (all of them, gathered): windows
    pooled into one row per text first (`pool`: mean | max)."""
    logits, references, documents = [], [], []
    for batch_logits, targets, texts in batches:
        logits.append(batch_logits.float().cpu())
        references.append(targets.cpu())
        documents += [texts.cpu()] if texts is not None else []
    logits, references = torch.cat(logits), torch.cat(references)
    if documents:
        logits, references = windows.pool(logits, references, torch.cat(documents), pool)
    predictions, refs = problem.predict(logits), references.numpy()
    return Evaluation(
        loss=problem.eval_loss(logits, references),
        predictions=predictions,
        references=refs,
        scores=problem.scores(predictions, refs),
        logits=logits.numpy(),
    )


def logits_of(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The model's logits for `batch`. Labels stay out of the forward call: the model would
    compute a loss of its own, by its config's `problem_type`, which our loss replaces."""
    return model(**{k: v for k, v in batch.items() if k not in ("labels", DOCUMENT)}).logits


def _calibration_row(step: int, tuned: dict, splits: dict[str, Evaluation]) -> dict:
    """The history's row on calibration: the temperature, and per split ECE, NLL and Brier
    score before and after (the reliability bins stay in metrics.json)."""
    return {
        "kind": "calibration",
        "step": step,
        "temperature": tuned["calibration_temperature"],
        **{
            split: {
                when: {k: v for k, v in scores.items() if k != "bins"}
                for when, scores in evaluation.calibration.items()
            }
            for split, evaluation in splits.items()
        },
    }
