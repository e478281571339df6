"""Evaluate a fine-tuned model on any data set the training data layer reads:

    python -m sft.evaluate <run_dir | model_dir> data.path=<data> [data.<key>=...] [split]

Writes metrics.json (accuracy, macro-F1, per-class report, confusion matrix, examples/s) and
confusion_matrix.png to --output-dir (default <run_dir>/evaluations/<data>-<split>, or
evaluations/<data>-<split> beside a model directory). Labels are matched to the model's by name;
a label the model does not know is an error that lists both.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from sft import cli
from sft import config as schema
from sft.errors import SftError
from sft.runs.directory import write_json

log = logging.getLogger(__name__)


def evaluate_model(
    source: str,
    overrides: list[str],
    split: str | None,
    output_dir: Path | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of the model in `source` on the data the overrides name; writes them out."""
    from sft import problems
    from sft.data.loaders import eval_loader, load_raw_data
    from sft.data.splits import Splits
    from sft.training import loop
    from sft.training.accelerator import (
        decide_precision,
        device_type,
        fresh_accelerator,
        launcher_choice,
    )
    from sft.training.model import resolve

    found = resolve(source)
    base = found.run.config if found.run is not None else {"task": found.task}
    fixed = {"model": {"checkpoint": found.ref}, "output_dir": ""}  # nothing is trained
    cfg = schema.with_overrides(base, overrides, fixed)
    modality = found.modality
    inputs = modality.inputs(cfg.model.checkpoint, cfg.model.revision, cfg.data, cfg.augment)
    raw = load_raw_data(modality, cfg.data)
    split = _choose_split(raw, split, cfg.data.path)
    model = found.load()
    problem = problems.of_model(model.config)
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    ds = _with_targets(raw[split], cfg.data, problem, labels, f"{cfg.data.path} ({split})")
    # Inputs encode whole splits; an empty validation split costs nothing.
    encoded = inputs.encode(Splits(ds, ds.select([]), None, labels)).train
    chosen = decide_precision(cfg.trainer.precision, device_type(), launcher_choice())
    accelerator = fresh_accelerator(mixed_precision=chosen.mixed_precision)
    model, loader = accelerator.prepare(
        model, eval_loader(encoded, inputs, cfg.trainer.eval_batch_size)
    )
    problem.load_metrics()  # seconds of imports, before the clock starts (as loading the model)
    start = time.perf_counter()
    result = loop.evaluate(accelerator, model, loader, problem, progress)
    tuned = problem.saved_rule(model.config)  # as tuned on the run's validation split
    result = problem.apply(result, tuned)
    seconds = time.perf_counter() - start
    report = {
        "problem": problem.name,
        "split": split,
        "data": cfg.data.path,
        "model": found.ref,
        **problem.report(result.predictions, result.references, labels),
        **tuned,
        "loss": result.loss,
        "seconds": seconds,  # forward passes and scores: loading and encoding excluded
        "examples_per_s": len(encoded) / seconds,
        **chosen.report(accelerator),
    }
    name = Path(cfg.data.path).name or "data"
    parent = found.run.evaluations if found.run is not None else Path("evaluations")
    out = output_dir or parent / f"{name}-{split}"
    problem.plot_outcome(report, result, f"{name} {split}", out)
    write_json(out / "metrics.json", report)
    scores = ", ".join(f"{k} {report[k]:.4f}" for k in problem.metrics)
    examples, ran = report["num_examples"], report["precision"]
    log.info("%s %s: %s on %d examples (%s) -> %s", name, split, scores, examples, ran, out)
    return report


def _choose_split(raw, split: str | None, source: str) -> str:
    if split is not None:
        if split not in raw:
            raise SftError(f"{source} has no '{split}' split; its splits: {sorted(raw)}")
        return split
    if "test" in raw:
        return "test"
    if len(raw) == 1:
        return next(iter(raw))
    raise SftError(f"{source} has splits {sorted(raw)}; name the one to evaluate")


def _with_targets(ds, data, problem, labels: list[str], where: str):
    """`ds` with `problem`'s targets in LABELS, for a model trained on `labels` (matched by
    name: a label the model does not know is an error that names it)."""
    from sft.data.columns import require_columns
    from sft.data.splits import LABELS
    from sft.data.targets import TargetSpec, arrow_column

    spec = TargetSpec(data.label_column, tuple(data.label_columns or ()), data.label_separator)
    require_columns(ds, [(spec.key, c) for c in spec.sources], where)
    targets = problem.target_encoder(spec, labels)(ds, where)
    if LABELS in ds.column_names:
        ds = ds.remove_columns(LABELS)
    return ds.add_column(LABELS, arrow_column(targets))


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sft.evaluate", "Evaluate a fine-tuned model on a data set.")
    parser.add_argument("model", help="run directory or model directory")
    parser.add_argument("args", nargs="*", help="data.<key>=<value> overrides, then a split name")
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--no-progress", action="store_true")
    cli.run(parser, _evaluate, argv)


def _evaluate(args) -> None:
    overrides = [a for a in args.args if "=" in a]
    splits = [a for a in args.args if "=" not in a]
    if len(splits) > 1:
        raise SftError(f"one split at most, got {splits}")
    keys = set(schema.schema_keys())
    for key in (o.split("=", 1)[0] for o in overrides):
        if key.lstrip("+~") not in keys:
            raise SftError(schema.not_a_key(key))
    if not any(o.startswith("data.path=") for o in overrides):
        raise SftError("name the data to evaluate on: data.path=<hub id, file or directory>")
    split = splits[0] if splits else None
    evaluate_model(args.model, overrides, split, args.output_dir, not args.no_progress)


if __name__ == "__main__":
    main()
