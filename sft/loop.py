"""The training loop: forward, backward, step, log — with evaluation, best-model tracking and early
stopping as one-line calls out of it. Modality-agnostic: batches are dicts the model accepts."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

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
class Outcome:
    steps: int
    best: Best
    train_seconds: float


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
    on_epoch: Callable[[int], None] | None = None,
) -> Outcome:
    """Train for `total_steps` optimizer steps, evaluating each epoch (or every `eval_every`
    steps); `record` receives every history row; `loss_fn(logits, labels)` is the training
    loss; `on_epoch(epoch)` runs as each epoch starts. Returns the best weights and step."""
    best = Best(settings.metric)
    steps_per_epoch = math.ceil(len(train_loader) / settings.grad_accum_steps)
    eval_every = settings.eval_every or steps_per_epoch
    bar = tqdm(
        total=total_steps,
        desc="train",
        disable=not (settings.progress and accelerator.is_main_process),
    )
    step, seen, running_loss, start, eval_seconds = 0, 0, [], time.perf_counter(), 0.0
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        if on_epoch is not None:
            on_epoch(epoch)
        train_mode(model)
        for batch in train_loader:
            with accelerator.accumulate(model):
                loss = loss_fn(logits_of(model, batch), batch["labels"])
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            running_loss.append(loss.detach())
            seen += len(batch["labels"]) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            bar.update()
            if step % settings.log_every == 0 or step == total_steps:
                seconds = time.perf_counter() - start - eval_seconds
                row = _train_row(accelerator, step, epoch, running_loss, scheduler, seen / seconds)
                bar.set_postfix(
                    loss=f"{row['loss']:.4f}",
                    lr=f"{row['lr']:.2e}",
                    ex_s=f"{row['examples_per_s']:.1f}",
                )
                record(row)
                running_loss = []
            if step % eval_every == 0 or step == total_steps:
                eval_start = time.perf_counter()
                result = evaluate(accelerator, model, eval_loader)
                eval_seconds += time.perf_counter() - eval_start
                improved = best.update(result, step, accelerator.unwrap_model(model))
                record(_eval_row(step, epoch, result, improved))
                log.info(
                    "step %d: eval loss %.4f, accuracy %.4f, f1 %.4f%s",
                    step,
                    result.loss,
                    result.scores["accuracy"],
                    result.scores["f1"],
                    " (best)" if improved else "",
                )
                if (
                    settings.early_stopping_patience
                    and best.evals_since >= settings.early_stopping_patience
                ):
                    log.info(
                        "early stopping: no %s improvement in %d evaluations",
                        best.metric,
                        best.evals_since,
                    )
                    total_steps = step
            if step >= total_steps:
                break
        if step >= total_steps:
            break
    bar.close()
    return Outcome(steps=step, best=best, train_seconds=time.perf_counter() - start)


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


def _train_row(accelerator, step, epoch, losses, scheduler, examples_per_s) -> dict:
    loss = accelerator.gather(torch.stack(losses).mean()).mean().item()
    return {
        "kind": "train",
        "step": step,
        "epoch": epoch,
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
