"""The training loop: forward, backward, step, log — with logging, evaluation (best-model
tracking, early stopping) and checkpoint-or-stop as one-line calls out of it. Modality-agnostic:
batches are dicts the model accepts."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import psutil
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sft.config import TrainerConfig
from sft.errors import SftError
from sft.problems import Problem
from sft.training.accelerator import named
from sft.training.finetune import train_mode
from sft.training.scoring import evaluate, logits_of
from sft.training.state import Best, Evaluation, Outcome, Progress

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """What `fit` trains with, prepared by Accelerate: the model, its optimizer and schedule,
    the train and validation batches, the training loss and the problem that scores."""

    accelerator: Accelerator
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    train_loader: DataLoader
    eval_loader: DataLoader
    problem: Problem
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy
    calibrate: bool = False  # fit a temperature on validation at the end (final_evaluations)
    pool: str = "mean"  # how the logits of a text's windows become its own (data.pool)


def fit(
    parts: Parts,
    settings: TrainerConfig,
    total_steps: int,
    record: Callable[[dict], None],
    on_epoch: Callable[[int, bool], None] | None = None,
    *,
    resume: Progress | None = None,
    checkpoint: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Train `parts` for `total_steps` optimizer steps, evaluating each epoch (or every
    `eval_every` steps); `record` receives every history row; `on_epoch(epoch, resumed)` runs
    as each epoch starts (resumed: mid-epoch, from a checkpoint). From `resume` on, if given.
    `checkpoint(progress)` runs every `checkpoint_every` steps and at each epoch end;
    `should_stop()` (a preemption signal) ends training after a checkpoint. Returns the best
    weights and step."""
    accelerator, model, optimizer = parts.accelerator, parts.model, parts.optimizer
    train_loader, scheduler, problem = parts.train_loader, parts.scheduler, parts.problem
    p = resume or Progress(Best(problem.metric(settings.metric)))
    n = len(train_loader)
    run = _Run(parts, settings, total_steps, record, p, n)
    mid_epoch = p.batches > 0
    while not run.done:
        if on_epoch is not None:
            on_epoch(p.epoch, mid_epoch)
        train_mode(model)
        batches = train_loader
        if mid_epoch:  # resumed from a checkpoint: skip what this epoch already trained on
            batches = accelerator.skip_first_batches(train_loader, p.batches)
            mid_epoch = False
        for batch in batches:
            with accelerator.accumulate(model):
                loss = parts.loss_fn(logits_of(model, batch), batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            run.count_batch(loss, len(batch["labels"]))
            if not accelerator.sync_gradients:
                continue  # accumulating: no optimizer step yet
            scheduler.step()
            run.count_step()
            run.log_if_due(scheduler)
            run.evaluate_if_due()
            if run.done:
                break
            if run.checkpoint_or_stop(checkpoint, should_stop):
                return run.outcome(preempted=True)
        if not run.done:
            run.end_epoch(checkpoint)
    if checkpoint is not None and should_stop is not None and should_stop():
        # Asked to stop during the last step (its evaluation): stop, as the signal was told.
        p.seconds = time.perf_counter() - run.start
        checkpoint(p)
        return run.outcome(preempted=True)
    return run.outcome()


class _Run:
    """The bookkeeping around the step: counting, logging, evaluation, early stopping,
    checkpoints, and the time spent, on the `Progress` that a checkpoint saves."""

    def __init__(self, parts: Parts, settings, total_steps, record, p, batches):
        self.accelerator, self.model = parts.accelerator, parts.model
        self.eval_loader, self.problem, self.pool = parts.eval_loader, parts.problem, parts.pool
        self.settings, self.total_steps, self.record, self.p = settings, total_steps, record, p
        self.batches_per_epoch = batches
        self.eval_every = settings.eval_every or math.ceil(batches / settings.grad_accum_steps)
        self.stopped_early = False
        self.startup_seconds: float | None = None
        self.start = time.perf_counter() - p.seconds
        self.bar = tqdm(
            total=total_steps,
            initial=p.step,
            desc="train",
            disable=not (settings.progress and self.accelerator.is_main_process),
        )

    @property
    def done(self) -> bool:
        return self.p.step >= self.total_steps or self.stopped_early

    def count_batch(self, loss: torch.Tensor, size: int) -> None:
        p = self.p
        p.batches += 1
        p.running_loss.append(loss.detach())
        p.seen += size * self.accelerator.num_processes

    def count_step(self) -> None:
        if self.startup_seconds is None:  # since this process started, as the OS records it
            self.startup_seconds = round(time.time() - psutil.Process().create_time(), 1)
        self.p.step += 1
        self.bar.update()

    def log_if_due(self, scheduler) -> None:
        """A history row every `log_every` steps and at the last: the mean training loss since
        the last row, the learning rate, and examples per second (evaluation time excluded)."""
        p = self.p
        if p.step % self.settings.log_every and p.step != self.total_steps:
            return
        seconds = time.perf_counter() - self.start - p.eval_seconds
        row = _train_row(self.accelerator, p, scheduler, p.seen / seconds)
        self.bar.set_postfix(
            loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", ex_s=f"{row['examples_per_s']:.1f}"
        )
        self.record(row)
        p.running_loss = []
        if not math.isfinite(row["loss"]):  # every later step would be wasted, and its weights
            raise SftError(
                f"training diverged: the training loss is {row['loss']} at step {p.step}; lower "
                f"optimizer.lr, or train in fp32 (trainer.precision=fp32) if it ran in bf16/fp16"
            )

    def evaluate_if_due(self) -> None:
        """Evaluate every `eval_every` steps and at the last; track the best; early stopping."""
        p = self.p
        if p.step % self.eval_every and p.step != self.total_steps:
            return
        eval_start = time.perf_counter()
        result = evaluate(self.accelerator, self.model, self.eval_loader, self.problem,
                          self.settings.progress, self.pool)  # fmt: skip
        # Scored under the rule the saved model would get (multi-label: the threshold tuned on
        # this evaluation), so the best checkpoint is the one whose final scores are best: at
        # 0.5 a young multi-label model predicts no label at all and every checkpoint ties at 0.
        tuned = self.problem.tune(result, p.best.metric)
        result = self.problem.apply(result, tuned)
        p.eval_seconds += time.perf_counter() - eval_start
        # The best weights are whole ones, gathered by Accelerate on every process.
        weights = partial(self.accelerator.get_state_dict, self.model)
        improved = p.best.update(result, p.step, weights)
        self.record(_eval_row(p.step, p.epoch, result, improved, tuned))
        scores = ", ".join(f"{k} {v:.4f}" for k, v in {**result.scores, **tuned}.items())
        log.info("step %d: eval loss %.4f, %s%s", p.step, result.loss, scores, " (best)" * improved)
        patience = self.settings.early_stopping_patience
        if patience and p.best.evals_since >= patience:
            log.info(
                "early stopping: no %s improvement in %d evaluations",
                p.best.metric,
                p.best.evals_since,
            )
            self.stopped_early = True

    def checkpoint_or_stop(self, checkpoint, should_stop) -> bool:
        """Checkpoint every `checkpoint_every` steps (epoch ends have their own); on a stop
        signal checkpoint and return True."""
        p = self.p
        p.seconds = time.perf_counter() - self.start
        if should_stop is not None and should_stop():
            checkpoint(p)
            return True
        every = self.settings.checkpoint_every
        end_of_epoch = p.batches == self.batches_per_epoch
        if checkpoint is not None and every and p.step % every == 0 and not end_of_epoch:
            checkpoint(p)
        return False

    def end_epoch(self, checkpoint) -> None:
        p = self.p
        p.epoch, p.batches = p.epoch + 1, 0
        p.seconds = time.perf_counter() - self.start
        if checkpoint is not None:
            checkpoint(p)

    def outcome(self, preempted: bool = False) -> Outcome:
        self.bar.close()
        seconds = self.p.seconds if preempted else time.perf_counter() - self.start
        return Outcome(self.p.step, self.p.best, seconds, preempted, self.startup_seconds)


def _train_row(accelerator, p: Progress, scheduler, examples_per_s) -> dict:
    loss = accelerator.gather(torch.stack(p.running_loss).mean()).mean().item()
    return {
        "kind": "train",
        "step": p.step,
        "epoch": p.epoch,
        "loss": loss,
        "lr": scheduler.get_last_lr()[0],
        "examples_per_s": examples_per_s,  # training only: evaluation time excluded
        # A run resumed in another precision shows where it changed
        "precision": named(accelerator.mixed_precision),
    }


def _eval_row(step: int, epoch: int, result: Evaluation, improved: bool, tuned: dict) -> dict:
    return {
        "kind": "eval",
        "step": step,
        "epoch": epoch,
        "loss": result.loss,
        **result.scores,
        **tuned,  # the rule those scores were computed under (multi-label: its threshold)
        "best": improved,
    }
