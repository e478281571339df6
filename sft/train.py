"""Entry point: `python -m sft.train recipe=bert_news [key=value ...]`, or the same under
`accelerate launch -m sft.train ...`. Hydra composes conf/ + the recipe + the command line into
the typed config; `train` builds the run from it, fits, and finishes the run directory (the parts
live in sft.data, sft.modalities, sft.problems, sft.training and sft.runs). Heavy libraries are
imported inside `train`, so `--cfg job`, `--help` and config errors answer in about a second.
"""

from __future__ import annotations

import logging
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from sft import cli
from sft import config as schema
from sft.runs.directory import PendingLog, RunDir
from sft.training.job import Job
from sft.validation import validate

log = logging.getLogger("sft.train")
schema.register()


def train(
    cfg: schema.Config,
    run_dir: str | Path,
    launch: DictConfig | None = None,
    log_so_far: PendingLog | None = None,
) -> dict[str, Any]:
    """Fine-tune `cfg.model.checkpoint` on `cfg.data` and write the run directory (with
    `launch`, Hydra's config, and `log_so_far`, once claimed); returns the final metrics (test
    split if any, else validation), or under `dry_run` the parameter-group summary."""
    from accelerate.utils import set_seed

    from sft import problems
    from sft.publishing import hub
    from sft.training import checkpoint, trackers
    from sft.training.accelerator import make_accelerator

    validate(cfg)
    problem = problems.get(cfg.problem)
    cfg.trainer.metric = problem.metric(cfg.trainer.metric)  # auto resolved
    if cfg.push_to_hub and not cfg.dry_run:
        hub.check_online()  # fail now, not after training
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.seed)
    out = RunDir(run_dir)
    if accelerator.is_main_process:
        out.lock()  # one live run per directory
    if cfg.resume == "auto" and out.finished() and not cfg.dry_run:
        out.refuse_other_settings(cfg)  # before anything in the run changes
        log.info("%s holds a finished run (metrics.json): nothing to do", out.root)
        accelerator.end_training()
        result = out.read_metrics()
        if cfg.push_to_hub and accelerator.is_main_process:  # a retry, after a failed push
            result["pushed_to"] = hub.push_finished(out, cfg.hub.repo_id, cfg.hub.private)
        return result
    checkpoints = checkpoint.Checkpoints(accelerator, out, cfg.trainer.keep_checkpoints)
    resume_from = checkpoints.resume_point(cfg.resume)
    job = build(cfg, accelerator, problem)
    if accelerator.is_main_process:
        out.begin(cfg, resume_from is not None, launch, log_so_far)  # data and model built
        out.write_param_groups(job.param_groups)
    if cfg.dry_run:
        accelerator.end_training()
        return job.param_groups
    trackers.start(accelerator, cfg.logger.name, cfg)
    result, final = fit(cfg, accelerator, job, out, checkpoints, resume_from)
    weights = accelerator.get_state_dict(job.model)  # the best, whole; every process calls it
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(job.model)
        finish(cfg, out, job, model, weights, result, final)
    accelerator.wait_for_everyone()
    checkpoints.remove_all()  # the run is complete: model/ and metrics.json replace them
    accelerator.end_training()
    return result


def build(cfg: schema.Config, accelerator, problem) -> Job:
    """Data, model (what trains, at which rate), loaders and optimizer, prepared by Accelerate;
    `problem` (sft.problems) fitted to the train targets."""
    from sft import modalities
    from sft.data.loaders import load_data, loaders
    from sft.training import feature_cache, finetune, optim
    from sft.training.model import check_checkpoint, enable_gradient_checkpointing, load_classifier

    modality = modalities.get(cfg.task)
    check_checkpoint(cfg.model.checkpoint, cfg.model.revision, modality, cfg.data.max_length)
    with accelerator.main_process_first():  # rank 0 fills the datasets cache, the rest reuse it
        raw, splits, inputs = load_data(
            modality, cfg.model, cfg.data, cfg.augment, cfg.seed, problem
        )
    log.info("data: %s", ", ".join(f"{name} {len(ds)}" for name, ds in splits.items()))
    log.info("labels (%d): %s", len(splits.labels), splits.labels)
    model = load_classifier(
        cfg.model.checkpoint,
        splits.labels,
        modality,
        cfg.model.revision,
        freeze_feature_encoder=cfg.model.freeze_feature_encoder,
        pad_token_id=getattr(inputs.processor, "pad_token_id", None),
        problem_type=problem.problem_type,
        head_bias=problem.head_bias(cfg.loss, splits.train_targets()),
    )
    problem = problem.fitted(splits.train_targets(), model, cfg.data.standardize_targets)
    if cfg.trainer.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    model = finetune.choose_trainable(model, cfg.finetune)
    o = cfg.optimizer
    groups = optim.param_groups(
        finetune.inner_model(model), o.lr, o.weight_decay, o.head_lr, o.layer_decay
    )
    cache = None
    if cfg.finetune.cache_features and not cfg.dry_run:
        cache = feature_cache.FeatureCache.create(
            model, cfg.finetune.strategy, inputs.train_randomness(splits.train)
        )
    if cache is not None:
        splits = cache.index(splits)
    data = loaders(splits, inputs, cfg.data, cfg.trainer, cfg.seed)
    optimizer = optim.make_optimizer(groups, cfg.optimizer)
    model, optimizer, train, validation = accelerator.prepare(
        model, optimizer, data.train, data.validation
    )
    data = data._replace(train=train, validation=validation)
    unfreezer = finetune.start_gradual(accelerator.unwrap_model(model), cfg.finetune)
    summary = optim.describe(groups)  # as training starts: after gradual's first freeze
    table = optim.format_table(summary)
    log.info("parameter groups (finetune=%s):\n%s", cfg.finetune.strategy, table)
    return Job(modality, raw, splits, inputs, model, summary, optimizer, data, cache, unfreezer,
               problem)  # fmt: skip


def fit(cfg: schema.Config, accelerator, job: Job, out: RunDir, checkpoints, resume_from):
    """Train (from a checkpoint when there is one), then evaluate the best weights on validation
    and test; returns the metrics and the final evaluation. SIGTERM or Ctrl-C ends it with
    `Preempted` after a checkpoint."""
    from sft.training import checkpoint, loop, optim, scoring, trackers
    from sft.training.accelerator import precision_report

    t = cfg.trainer
    total_steps, scheduler = optim.schedule(
        cfg.scheduler, t, job.optimizer, len(job.loaders.train), accelerator
    )
    checkpoints.track(job.model, job.optimizer, scheduler)
    progress = None
    if resume_from is not None:
        progress = checkpoints.load(resume_from, t.metric)
        log.info("resuming from %s (step %d, epoch %d)", resume_from, progress.step, progress.epoch)
    if job.cache is not None:  # every process caches every example: keys are global
        job.cache.fill(
            job.splits,
            job.inputs.collator(train=False),
            t.eval_batch_size,
            accelerator.device,
            cfg.finetune.cache_max_gib,
            progress=t.progress and accelerator.is_main_process,
            autocast=accelerator.autocast,  # the precision training computes them in
        )
    record = trackers.recorder(accelerator, out)

    def on_epoch(epoch: int, resumed: bool) -> None:
        # Each epoch's shuffle depends on the seed and the epoch alone: a resumed run draws it
        # again and skips what it already trained on.
        job.loaders.shuffle.manual_seed(cfg.seed + epoch)
        if job.unfreezer is not None:
            blocks = job.unfreezer.apply(epoch)
            if not resumed:
                record({"kind": "unfreeze", "epoch": epoch, "blocks_training": blocks})
            total = len(job.unfreezer.layout.blocks)
            log.info("epoch %d: %d of %d blocks train", epoch, blocks, total)

    keep, problem = t.keep_checkpoints > 0, job.problem
    # Validation batches carry cache keys: evaluate them within `serving` too.
    with (
        job.cache.serving() if job.cache is not None else nullcontext(),
        checkpoint.Preemption(accelerator) if keep else nullcontext() as preempted,
    ):
        loss = problem.loss(cfg.loss, job.splits.train_targets(), len(job.splits.labels))
        parts = loop.Parts(accelerator, job.model, job.optimizer, scheduler, job.loaders.train,
                           job.loaders.validation, problem, loss,
                           cfg.calibration == "temperature", cfg.data.pool)  # fmt: skip
        outcome = loop.fit(
            parts,
            t,
            total_steps,
            record,
            on_epoch,
            resume=progress,
            checkpoint=checkpoints.save if keep else None,
            should_stop=preempted,
        )
        if outcome.preempted:
            accelerator.end_training()
            raise preempted.stopped(outcome.steps, checkpoints.root)
        validation, final, tuned = scoring.final_evaluations(
            parts, outcome, job.loaders.test, t.progress, record
        )
    problem.bake_into(accelerator.unwrap_model(job.model), tuned)  # saved with the model
    if cfg.data.long_text == "chunks":  # so that whatever runs the saved model cuts and pools
        d = cfg.data
        accelerator.unwrap_model(job.model).config.long_text = {
            "max_length": d.max_length, "stride": d.stride, "max_chunks": d.max_chunks,
            "pool": d.pool}  # fmt: skip
    split = "test" if job.loaders.test is not None else "validation"
    result = {
        **problem.final_report(final, validation, job.splits.labels, split, tuned),
        "best_step": outcome.best.step,
        "steps": outcome.steps,
        **outcome.timings(),
        **precision_report(accelerator, t.precision),
    }
    if job.cache is not None and job.cache.features:
        result["feature_cache_seconds"] = round(job.cache.seconds, 1)  # spent before training
    return result, final


def finish(cfg: schema.Config, out: RunDir, job: Job, model, weights: dict, result: dict, final):
    """Rank 0: the model (`weights`, gathered by Accelerate), plots and report.html (`final`:
    the evaluation `result` scores) and metrics; the push."""
    from sft.problems import summary
    from sft.reporting.page import draw_run
    from sft.training.finetune import save_model

    def save(directory: Path) -> None:
        save_model(model, weights, cfg.finetune, directory)
        job.inputs.processor.save_pretrained(directory)

    out.write_results(save, result, lambda: draw_run(out, result, final, job))
    log.info("%s; run directory: %s", summary(result), out.root)
    if cfg.push_to_hub:
        from sft.publishing.hub import push_finished

        result["pushed_to"] = push_finished(out, cfg.hub.repo_id, cfg.hub.private)


def main(argv: list[str] | None = None) -> None:
    """`python -m sft.train [overrides]`, or `argv` as the command line (Hydra reads sys.argv)."""
    sys.argv[1:] = sys.argv[1:] if argv is None else argv
    with cli.composes_config():
        hydra_main()


@hydra.main(version_base="1.3", config_path=str(schema.CONF_DIR), config_name="config")
def hydra_main(cfg: DictConfig) -> float | None:
    # In a sweep each job runs in its own sub-directory: record where this one really is.
    cfg.output_dir = HydraConfig.get().runtime.output_dir
    log_so_far = PendingLog.hold()  # train.log only once the run directory is claimed
    try:
        with cli.exits_on_user_error():
            result = train(typed := schema.to_config(cfg), cfg.output_dir, cfg, log_so_far)
    finally:
        log_so_far.close()
    if cfg.dry_run:
        return None
    # What a sweeper (Optuna) optimises: the validation score. Choosing by test scores would
    # leak the test set into the choice.
    return result["validation"][typed.trainer.metric]


if __name__ == "__main__":
    main()
