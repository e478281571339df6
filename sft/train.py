"""Entry point: `python -m sft.train recipe=bert_news [key=value ...]`, or the same under
`accelerate launch -m sft.train ...`.

Hydra composes conf/ + the recipe + the command line; this module turns that config into typed
objects and runs the job. Heavy libraries are imported inside `train`, so `--cfg job`, `--help`
and config errors answer in about a second.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sft import config as schema
from sft.errors import Preempted, SftError, exit_with

log = logging.getLogger("sft.train")
schema.register()


def train(cfg: schema.Config, run_dir: str | Path) -> dict[str, Any]:
    """Fine-tune `cfg.model.checkpoint` on `cfg.data` and write the run directory.

    Returns the final metrics (test split when there is one, else validation).
    """
    from accelerate.utils import set_seed

    from sft import finetune, loop, trackers
    from sft.checkpoint import Checkpoints, Preemption
    from sft.feature_cache import FeatureCache
    from sft.loss import class_weights, cross_entropy
    from sft.model import load_classifier
    from sft.outputs import RunDir

    schema.validate(cfg)
    gradual = cfg.finetune.strategy == "gradual"
    accelerator = _accelerator(cfg, run_dir)
    if not accelerator.is_main_process:
        logging.getLogger("sft").setLevel(logging.WARNING)  # one voice: rank zero's
    set_seed(cfg.seed)
    out = RunDir(run_dir)
    if cfg.resume == "auto" and out.metrics.exists() and not cfg.dry_run:
        log.info("%s holds a finished run (metrics.json): nothing to do", out.root)
        accelerator.end_training()
        return json.loads(out.metrics.read_text())
    checkpoints = Checkpoints(accelerator, out.root, cfg.trainer.keep_checkpoints)
    resume_from = _resume_point(cfg.resume, checkpoints)
    if accelerator.is_main_process:
        out.write_config(cfg)
        out.clear_results()
        if resume_from is None:
            out.start_history()
    if cfg.logger.name != "none" and not cfg.dry_run:
        accelerator.init_trackers(
            trackers.project_name(cfg.logger.name), config=trackers.hyperparameters(cfg)
        )

    with accelerator.main_process_first():  # rank 0 fills the datasets cache, the rest reuse it
        splits, inputs = load_data(cfg)
    log.info("data: %s", ", ".join(f"{name} {len(ds)}" for name, ds in splits.items()))
    log.info("labels (%d): %s", len(splits.labels), splits.labels)
    model = load_classifier(
        cfg.model.checkpoint,
        splits.labels,
        cfg.task,
        cfg.model.revision,
        freeze_feature_encoder=cfg.model.freeze_feature_encoder,
    )
    pad_id = getattr(inputs.processor, "pad_token_id", None)
    if pad_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_id  # GPT-style checkpoints pad with EOS
    if cfg.trainer.gradient_checkpointing:
        _enable_gradient_checkpointing(model)
    model, groups = _choose_trainable(model, cfg)
    cache = None
    if cfg.finetune.cache_features and not cfg.dry_run:
        cache = FeatureCache.create(
            model, cfg.finetune.strategy, inputs.train_randomness(splits.train)
        )
    if cache is not None:
        splits = cache.index(splits)
    train_loader, val_loader, test_loader, shuffle = _loaders(splits, inputs, cfg)
    optimizer = _optimizer(groups, cfg.optimizer)
    model, optimizer, train_loader, val_loader = accelerator.prepare(
        model, optimizer, train_loader, val_loader
    )
    # Gradual unfreezing freezes only now: DDP, wrapping the model above, ignores for good the
    # parameters that were frozen when it was built.
    unfreezer = None
    if gradual:
        inner = finetune.inner_model(accelerator.unwrap_model(model))
        unfreezer = finetune.GradualUnfreezing(inner, cfg.finetune.every)
        unfreezer.apply(0)
    summary = finetune.describe(groups)
    log.info(
        "parameter groups (finetune=%s):\n%s", cfg.finetune.strategy, finetune.format_table(summary)
    )
    if accelerator.is_main_process:
        out.write_json("param_groups.json", summary)
    if cfg.dry_run:
        accelerator.end_training()
        return summary
    total_steps, scheduler = _schedule(cfg, optimizer, len(train_loader), accelerator)
    accelerator.register_for_checkpointing(scheduler)
    progress = None
    if resume_from is not None:
        progress, history_rows = checkpoints.load(resume_from, cfg.trainer.metric)
        if accelerator.is_main_process:
            out.truncate_history(history_rows)  # rows written after the checkpoint come again
        log.info("resuming from %s (step %d, epoch %d)", resume_from, progress.step, progress.epoch)
    if cache is not None:  # every process caches every example: keys are global
        with accelerator.autocast():  # the precision training would compute them in
            cache.fill(
                splits,
                inputs.collator(train=False),
                cfg.trainer.eval_batch_size,
                accelerator.device,
                cfg.finetune.cache_max_gib,
                progress=cfg.trainer.progress and accelerator.is_main_process,
            )

    def record(row: dict) -> None:  # history.jsonl and the tracker, from rank 0 only
        if accelerator.is_main_process:
            out.record(row)
            accelerator.log(trackers.scalars(row), step=row.get("step"))

    def on_epoch(epoch: int, resumed: bool) -> None:
        # Each epoch's shuffle depends on the seed and the epoch alone: a resumed run draws it
        # again and skips what it already trained on.
        shuffle.manual_seed(cfg.seed + epoch)
        if unfreezer is not None:
            blocks = unfreezer.apply(epoch)
            if not resumed:
                record({"kind": "unfreeze", "epoch": epoch, "blocks_training": blocks})
            log.info("epoch %d: %d of %d blocks train", epoch, blocks, len(unfreezer.layout.blocks))

    def checkpoint(p: loop.Progress) -> None:
        checkpoints.save(p, len(out.read_history()) if accelerator.is_main_process else 0)

    keep = cfg.trainer.keep_checkpoints > 0
    preemption = Preemption(accelerator) if keep else None

    # Validation batches carry cache keys: evaluate them within `serving` too.
    with cache.serving() if cache is not None else nullcontext():
        outcome = loop.fit(
            accelerator,
            model,
            optimizer,
            scheduler,
            train_loader,
            val_loader,
            cfg.trainer,
            total_steps,
            record,
            cross_entropy(
                class_weights(cfg.loss.class_weights, splits.train["labels"], len(splits.labels)),
                cfg.loss.label_smoothing,
            ),
            on_epoch,
            resume=progress,
            checkpoint=checkpoint if keep else None,
            should_stop=preemption,
        )
        if preemption is not None:
            preemption.restore()
        if outcome.preempted:
            accelerator.end_training()
            raise Preempted(
                f"stopped by SIGTERM at step {outcome.steps}; checkpoint saved in "
                f"{checkpoints.root}. Run the same command again to continue (resume=auto)"
            )

        unwrapped = accelerator.unwrap_model(model)
        validation = outcome.best.evaluation
        if outcome.best.state is not None:
            unwrapped.load_state_dict(outcome.best.state)
        else:  # no finite evaluation: report the last weights as they are
            validation = loop.evaluate(accelerator, model, val_loader)
        final = validation
        if test_loader is not None:
            final = loop.evaluate(accelerator, model, accelerator.prepare(test_loader))
    result = {
        "split": "test" if test_loader is not None else "validation",
        **_report(final, splits.labels),
        "validation": {"loss": validation.loss, **validation.scores},
        "best_step": outcome.best.step,
        "steps": outcome.steps,
        "train_seconds": round(outcome.train_seconds, 1),
    }
    if cache is not None and cache.features:
        result["feature_cache_seconds"] = round(cache.seconds, 1)  # spent before training
    if accelerator.is_main_process:
        if cfg.finetune.strategy == "lora" and cfg.finetune.merge:
            unwrapped = unwrapped.merge_and_unload()  # a plain transformers model to save
        _write_results(out, unwrapped, inputs.processor, result)
        if cfg.push_to_hub:
            result["pushed_to"] = _push(out, cfg)
    accelerator.wait_for_everyone()
    checkpoints.remove_all()  # the run is complete: model/ and metrics.json replace them
    accelerator.end_training()
    return result


def _accelerator(cfg: schema.Config, run_dir: str | Path):
    """Accelerate's engine for this run: precision, accumulation, tracker, DDP settings."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from sft import trackers

    if cfg.push_to_hub and not cfg.dry_run:
        from huggingface_hub import constants

        if constants.is_offline_mode():  # fail now, not after training
            raise SftError(
                "push_to_hub=true but HF_HUB_OFFLINE=1 is set: unset it, or push later with "
                "python -m sft.push <run_dir> --repo-id ..."
            )
    gradual = cfg.finetune.strategy == "gradual"
    return Accelerator(
        mixed_precision=_precision(cfg.trainer.precision),
        log_with=trackers.log_with(cfg.logger.name),
        project_dir=str(run_dir),  # trackers write there
        gradient_accumulation_steps=cfg.trainer.grad_accum_steps,
        # Some parameters get no gradient in a step: blocks frozen for a while (gradual),
        # layers skipped by LayerDrop (wav2vec2, HuBERT). DDP must expect that, as HF Trainer
        # does unless gradient checkpointing is on.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                find_unused_parameters=gradual or not cfg.trainer.gradient_checkpointing
            )
        ],
    )


def _push(out, cfg: schema.Config) -> str:
    from sft.push import push

    try:
        return push(out.root, cfg.hub.repo_id, cfg.hub.private)
    except SftError as err:
        raise SftError(
            f"the run finished in {out.root}, but the push failed: {err}. Retry with "
            f"python -m sft.push {out.root} --repo-id {cfg.hub.repo_id}"
        ) from err


def _resume_point(resume: str, checkpoints) -> Path | None:
    """The checkpoint to continue from: `resume=auto` takes the run directory's latest complete
    one, `never` deletes them all, anything else names a checkpoint directory."""
    if resume == "never":
        checkpoints.remove_all()
        return None
    if resume == "auto":
        return checkpoints.latest()
    path = Path(resume)
    if not path.is_dir():
        raise SftError(
            f"resume={resume}: no such checkpoint directory; use auto, never, or a "
            f"<run>/checkpoints/step-N directory"
        )
    return path


def _schedule(cfg: schema.Config, optimizer, batches_per_epoch: int, accelerator):
    """How many optimizer steps to take, and the learning-rate scheduler over them; logs the
    plan, global batch included."""
    from transformers import get_scheduler

    trainer = cfg.trainer
    steps_per_epoch = math.ceil(batches_per_epoch / trainer.grad_accum_steps)
    total_steps = trainer.max_steps or trainer.epochs * steps_per_epoch
    # Not handed to `prepare`: the loop steps it once per optimizer step, on every process alike.
    scheduler = get_scheduler(
        cfg.scheduler.name,
        optimizer,
        num_warmup_steps=round(cfg.scheduler.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    global_batch = trainer.batch_size * accelerator.num_processes * trainer.grad_accum_steps
    log.info(
        "training %d steps (%.1f epochs): batch %d per process x %d processes x %d accumulation "
        "= %d examples per step; precision %s on %s",
        total_steps,
        total_steps / steps_per_epoch,
        trainer.batch_size,
        accelerator.num_processes,
        trainer.grad_accum_steps,
        global_batch,
        accelerator.mixed_precision,
        accelerator.device,
    )
    return total_steps, scheduler


def load_data(cfg: schema.Config):
    """Raw data -> checked splits -> model inputs, for the modality of `cfg.task`."""
    from sft.data import build_splits, load_raw

    data = cfg.data
    inputs, key = make_inputs(cfg)
    raw = load_raw(
        data.path,
        name=data.name,
        encodings=data.encodings,
        input_column=inputs.column,
        label_column=data.label_column,
        input_is_path=cfg.task != "text-classification",
    )
    splits = build_splits(
        raw,
        source=data.path,
        input_column=inputs.column,
        label_column=data.label_column,
        input_key=key,
        eval_fraction=data.eval_fraction,
        test_fraction=data.test_fraction,
        max_train_samples=data.max_train_samples,
        max_eval_samples=data.max_eval_samples,
        seed=cfg.seed,
    )
    return inputs.encode(splits), inputs


def make_inputs(cfg: schema.Config):
    """The `Inputs` of the task's modality, and the config key naming its input column."""
    checkpoint, revision = cfg.model.checkpoint, cfg.model.revision
    if cfg.task == "text-classification":
        from sft.data.text import TextInputs

        inputs = TextInputs(checkpoint, cfg.data.text_column, cfg.data.max_length, revision)
        return inputs, "data.text_column"
    if cfg.task == "image-classification":
        from sft.data.augment import image_augmenter
        from sft.data.image import ImageInputs
        from sft.model import num_channels

        aug = cfg.augment
        augment = image_augmenter(aug.zoom, aug.hflip, aug.shear, aug.color_jitter)
        channels = num_channels(checkpoint, revision)
        inputs = ImageInputs(checkpoint, cfg.data.image_column, channels, augment, revision)
        return inputs, "data.image_column"
    if cfg.task == "audio-classification":
        from sft.data.audio import AudioInputs
        from sft.data.augment import audio_augmenter

        aug = cfg.augment
        augment = audio_augmenter(aug.gain_db, aug.noise_snr_db, aug.shift, aug.p)
        inputs = AudioInputs(
            checkpoint, cfg.data.audio_column, cfg.data.max_duration, augment, revision
        )
        return inputs, "data.audio_column"
    raise SftError(
        f"task={cfg.task} is not supported; use text-classification, image-classification or "
        f"audio-classification"
    )


def _loaders(splits, inputs, cfg: schema.Config):
    """Train, validation and test loaders (test None when there is no test split), and the
    generator that shuffles the train split."""
    import torch
    from torch.utils.data import DataLoader

    from sft.feature_cache import FeatureCache

    def eval_loader(ds):
        return DataLoader(
            ds,
            batch_size=cfg.trainer.eval_batch_size,
            collate_fn=FeatureCache.collator(inputs.collator(train=False)),
            num_workers=cfg.data.num_workers,
        )

    generator = torch.Generator().manual_seed(cfg.seed)
    if cfg.data.sampler == "balanced":
        sampler = _balanced_sampler(splits.train["labels"], generator)
    elif cfg.data.sampler == "default":
        sampler = inputs.sampler(splits.train, cfg.trainer.batch_size, generator)
    else:
        raise SftError(f"data.sampler={cfg.data.sampler} is not one of default, balanced")
    train = DataLoader(
        splits.train,
        batch_size=cfg.trainer.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=FeatureCache.collator(inputs.collator(train=True)),
        num_workers=cfg.data.num_workers,
        generator=generator,
    )
    test = eval_loader(splits.test) if splits.test is not None else None
    return train, eval_loader(splits.validation), test, generator


def _balanced_sampler(labels, generator):
    """Draws examples with probability 1 / (size of their class): classes equally often."""
    import numpy as np
    import torch

    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(weights, len(labels), generator=generator)


def _report(evaluation, labels: list[str]) -> dict[str, Any]:
    from sft import metrics

    return {
        **metrics.report(evaluation.predictions, evaluation.references, labels),
        "loss": evaluation.loss,
    }


def _write_results(out, model, processor, result: dict[str, Any]) -> None:
    """model/, plots/, then metrics.json last: its presence says the run completed."""
    from sft import plots

    def save(directory: Path) -> None:
        model.save_pretrained(directory, safe_serialization=True)
        processor.save_pretrained(directory)

    out.save_model(save)
    plots.plot_curves(out.read_history(), out.plots)
    plots.plot_confusion(
        result["confusion_matrix"],
        result["labels"],
        f"{result['split']} confusion matrix",
        out.plots / "confusion_matrix.png",
    )
    out.write_metrics(result)
    log.info(
        "%s: accuracy %.4f, macro-F1 %.4f on %d examples; trained %d steps in %.0f s",
        result["split"],
        result["accuracy"],
        result["f1"],
        result["num_examples"],
        result["steps"],
        result["train_seconds"],
    )
    log.info("run directory: %s", out.root)


def _precision(choice: str) -> str | None:
    """Accelerate's mixed_precision for `trainer.precision` on this hardware."""
    import torch

    gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in (
        "1",
        "true",
    )
    if choice == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
            # Chosen by `accelerate launch --mixed_precision` or `accelerate config` (the
            # launcher exports "no" when nothing was chosen: then the hardware decides).
            return None
        if not gpu:
            return "no"  # bf16 matmuls on CPUs without bf16 units run hundreds of times slower
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "fp32":
        return "no"
    if choice == "fp16" and not gpu:
        raise SftError(
            "trainer.precision=fp16 needs a GPU; use trainer.precision=fp32 or auto on CPU"
        )
    if choice == "bf16":
        if not gpu:
            log.warning("trainer.precision=bf16 on CPU: expect it to be far slower than fp32")
        return "bf16"
    if choice == "fp16":
        return "fp16"
    raise SftError(f"trainer.precision={choice} is not one of auto, fp32, bf16, fp16")


def _enable_gradient_checkpointing(model) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise SftError(
            f"{type(model).__name__} does not support gradient checkpointing; set "
            f"trainer.gradient_checkpointing=false"
        )
    # Reentrant checkpointing drops the gradients of a block whose inputs do not require grad
    # (above frozen layers); transformers patches that by making the embedding outputs require
    # grad, which backpropagates through every frozen layer. Non-reentrant needs neither.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _choose_trainable(model, cfg: schema.Config):
    """Freeze (or wrap with LoRA) what `cfg.finetune` says, then group parameters with their
    learning rates. Returns the model to train and its groups."""
    from sft import finetune

    ft = cfg.finetune
    if ft.strategy == "lora":
        model = finetune.apply_lora(model, ft.r, ft.alpha, ft.dropout, ft.target_modules)
    elif ft.strategy == "gradual":
        finetune.find_layout(model)  # fails now, clearly, if there are no blocks to unfreeze
    else:
        finetune.apply_strategy(model, ft.strategy, ft.k, ft.train, ft.freeze)
    groups = finetune.param_groups(
        finetune.inner_model(model),
        lr=cfg.optimizer.lr,
        weight_decay=cfg.optimizer.weight_decay,
        head_lr=cfg.optimizer.head_lr,
        layer_decay=cfg.optimizer.layer_decay,
    )
    return model, groups


def _optimizer(groups: list[dict], settings: schema.OptimizerConfig):
    """AdamW over the trainable parameters of `groups`, each group at its own lr and decay."""
    import torch

    if settings.name.lower() != "adamw":
        raise SftError(f"optimizer.name={settings.name} is not supported; use adamw")
    trainable = [
        {"params": params, "lr": g["lr"], "weight_decay": g["weight_decay"]}
        for g in groups
        if (params := [p for p in g["params"] if p.requires_grad])
    ]
    return torch.optim.AdamW(
        trainable, lr=settings.lr, betas=tuple(settings.betas), eps=settings.eps
    )


def to_config(cfg: DictConfig) -> schema.Config:
    """The composed DictConfig as typed dataclasses, with every interpolation resolved."""
    try:
        return OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:
        cause = err.__cause__ if isinstance(err.__cause__, ValueError) else None
        message = str(cause) if cause else str(err).splitlines()[0]
        key = getattr(err, "full_key", None)
        raise SftError(f"config key '{key}': {message}" if key else message) from err


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    # In a sweep each job runs in its own sub-directory: record where this one really is.
    cfg.output_dir = HydraConfig.get().runtime.output_dir
    try:
        result = train(to_config(cfg), cfg.output_dir)
    except SftError as err:
        log.debug("input error", exc_info=True)
        exit_with(err)
    except Preempted as stop:
        sys.stderr.write(f"{stop}\n")
        sys.exit(0)  # a clean stop: the checkpoint is complete
    if cfg.dry_run:
        return None
    # What a sweeper (Optuna) optimises: the validation score. Choosing by test scores would
    # leak the test set into the choice.
    return result["validation"][cfg.trainer.metric]


if __name__ == "__main__":
    main()
