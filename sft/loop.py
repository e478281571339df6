"""The training loop: forward, backward, step, log — with evaluation, best-model tracking and early
stopping as one-line calls out of it. Modality-agnostic: batches are dicts the model accepts."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from sft import metrics
from sft.config import TrainerConfig

log = logging.getLogger(__name__)


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


@dataclass
class Outcome:
    steps: int
    best: Best
    train_seconds: float
    preempted: bool = False  # stopped by `should_stop` after a checkpoint, to be resumed


def fit(
    accelerator: Accelerator,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    train_loader: DataLoader,
    eval_loader: DataLoader,
    settings: TrainerConfig,
    total_steps: int,
    record: Callable[[dict], None],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
    on_epoch: Callable[[int, bool], None] | None = None,
    *,
    resume: Progress | None = None,
    checkpoint: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Outcome:
    """Train for `total_steps` optimizer steps, evaluating each epoch (or every `eval_every`
    steps); `record` receives every history row; `loss_fn(logits, labels)` is the training
    loss; `on_epoch(epoch, resumed)` runs as each epoch starts (resumed: mid-epoch, from a
    checkpoint). From `resume` on, if given. `checkpoint(progress)` runs every
    `checkpoint_every` steps and at each epoch end; `should_stop()` (a preemption signal) ends
    training after a checkpoint. Returns the best weights and step."""
    p = resume or Progress(Best(settings.metric))
    steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum_steps)
    eval_every = settings.eval_every or steps_per_epoch
    bar = tqdm(
        total=total_steps,
        initial=p.step,
        desc="train",
        disable=not (settings.progress and accelerator.is_main_process),
    )
    start = time.perf_counter() - p.seconds
    mid_epoch = p.batches > 0
    while p.step < total_steps:
        if on_epoch is not None:
            on_epoch(p.epoch, mid_epoch)
        train_mode(model)
        batches = (
            accelerator.skip_first_batches(train_loader, p.batches) if mid_epoch else train_loader
        )
        mid_epoch = False
        for batch in batches:
            with accelerator.accumulate(model):
                loss = loss_fn(logits_of(model, batch), batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            p.batches += 1
            p.running_loss.append(loss.detach())
            p.seen += len(batch["labels"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            p.step += 1
            bar.update()
            if p.step % settings.log_every == 0 or p.step == total_steps:
                seconds = time.perf_counter() - start - p.eval_seconds
                row = _train_row(accelerator, p, scheduler, p.seen / seconds)
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}",
                    lr=f"{row['lr']:.2e}",
                    ex_s=f"{row['examples_per_s']:.1f}",
                )
                record(row)
                p.running_loss = []
            evaluate_now = p.step % eval_every == 0 or p.step == total_steps
            if evaluate_now and _validate(accelerator, model, eval_loader, p, record, settings):
                total_steps = p.step  # early stopping
            if p.step >= total_steps:
                break
            p.seconds = time.perf_counter() - start
            if should_stop is not None and should_stop():
                checkpoint(p)
                bar.close()
                return Outcome(p.step, p.best, p.seconds, preempted=True)
            end_of_epoch = p.batches == len(train_loader)
            every = settings.checkpoint_every
            if checkpoint is not None and every and p.step % every == 0 and not end_of_epoch:
                checkpoint(p)
        else:  # the epoch ran to its end
            p.epoch, p.batches = p.epoch + 1, 0
            p.seconds = time.perf_counter() - start
            if checkpoint is not None and p.step < total_steps:
                checkpoint(p)
            continue
        break
    bar.close()
    return Outcome(steps=p.step, best=p.best, train_seconds=time.perf_counter() - start)


def _validate(accelerator, model, eval_loader, p: Progress, record, settings) -> bool:
    """Evaluate, track the best, record the row; True when early stopping says stop."""
    eval_start = time.perf_counter()
    result = evaluate(accelerator, model, eval_loader)
    p.eval_seconds += time.perf_counter() - eval_start
    improved = p.best.update(result, p.step, accelerator.unwrap_model(model))
    record(_eval_row(p.step, p.epoch, result, improved))
    log.info(
        "step %d: eval loss %.4f, accuracy %.4f, f1 %.4f%s",
        p.step,
        result.loss,
        result.scores["accuracy"],
        result.scores["f1"],
        " (best)" if improved else "",
    )
    patience = settings.early_stopping_patience
    if patience and p.best.evals_since >= patience:
        log.info(
            "early stopping: no %s improvement in %d evaluations",
            p.best.metric,
            p.best.evals_since,
        )
        return True
    return False


@torch.no_grad()
def evaluate(accelerator: Accelerator, model: torch.nn.Module, loader: DataLoader) -> Evaluation:
    """Loss, predictions and scores over every example of `loader`, each counted once across
    processes (`gather_for_metrics` drops the padding a distributed sampler adds)."""
    was_training = model.training
    model.eval()
    logits, references = [], []
    for batch in loader:
        batch_logits, batch_labels = accelerator.gather_for_metrics(
            (logits_of(model, batch), batch["labels"])
        )
        logits.append(batch_logits.float().cpu())
        references.append(batch_labels.cpu())
    if was_training:
        train_mode(model)
    all_logits, all_refs = torch.cat(logits), torch.cat(references)
    predictions = all_logits.argmax(-1).numpy()
    return Evaluation(
        loss=F.cross_entropy(all_logits, all_refs).item(),
        predictions=predictions,
        references=all_refs.numpy(),
        scores=metrics.headline(predictions, all_refs.numpy()),
    )


def logits_of(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """The model's logits for `batch`. Labels stay out of the forward call: the model would
    compute a loss of its own, by its config's `problem_type`, which our loss replaces."""
    return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def train_mode(model: torch.nn.Module) -> None:
    """Training mode, except for modules whose parameters are all frozen: they run as in
    inference (no dropout, BatchNorm statistics fixed), so a frozen part stays exactly the
    pretrained function, as Keras does with `trainable=False`."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def _train_row(accelerator, p: Progress, scheduler, examples_per_s) -> dict:
    loss = accelerator.gather(torch.stack(p.running_loss).mean()).mean().item()
    return {
        "kind": "train",
        "step": p.step,
        "epoch": p.epoch,
        "loss": loss,
        "lr": scheduler.get_last_lr()[0],
        "examples_per_s": examples_per_s,  # training only: evaluation time excluded
    }


def _eval_row(step: int, epoch: int, result: Evaluation, improved: bool) -> dict:
    return {
        "kind": "eval",
        "step": step,
        "epoch": epoch,
        "loss": result.loss,
        **result.scores,
        "best": improved,
    }
