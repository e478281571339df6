"""A saved model evaluated on one split, in one process: of any data the training data layer
reads (sft.evaluate, sft.report with data overrides), or of the run's own data, split as training
split it (sft.report RUN_DIR). Labels are matched to the model's by name; a label the model does
not know is an error that lists both."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sft import config as schema
from sft.errors import SftError
from sft.reporting.page import PLOTS, Evaluated, write_report
from sft.runs.directory import write_json

if TYPE_CHECKING:
    from sft.problems import Problem
    from sft.training.model import TrainedModel

log = logging.getLogger(__name__)


@dataclass
class SavedEvaluation:
    report: dict[str, Any]  # metrics.json
    evaluated: Evaluated  # the outputs, beside the examples they belong to
    found: TrainedModel
    problem: Problem
    name: str  # the data's name: where the results go, and their title

    def write(self, out: Path | None = None) -> Path:
        """metrics.json, the problem's plot and report.html (with the run's curves, where the
        model has a run) in folder `out`, by default <run>/evaluations/<data>-<split> (or
        evaluations/<data>-<split> beside a bare model); report.html's path."""
        report, split, run = self.report, self.report["split"], self.found.run
        parent = run.evaluations if run is not None else Path("evaluations")
        out = out or parent / f"{self.name}-{split}"
        # The run's training curves; not its plots of its own test split.
        curves = [run.plots / name for name in PLOTS["training"]] if run is not None else []
        evaluation = self.evaluated.evaluation
        drawn = self.problem.plot_outcome(report, evaluation, f"{self.name} {split}", out)
        write_json(out / "metrics.json", report)
        model = run.root.name if run is not None else self.found.ref
        return write_report(
            out / "report.html",
            report,
            self.evaluated,
            self.found.modality,
            self.problem,
            [*curves, drawn],
            f"{model} on {self.name} ({split})",
        )


def evaluate_saved(
    source: str, overrides: list[str], split: str | None, progress: bool = True
) -> SavedEvaluation:
    """The model in `source` (run directory, model directory or hub id) on `split` of the data
    the overrides name (data.path=...); without data.path, on the run's own data, split as
    training split it (the test split, else validation)."""
    import datasets

    from sft import problems
    from sft.data.loaders import load_data, load_raw_data
    from sft.data.splits import Splits
    from sft.training.model import resolve

    found = resolve(source)
    model = found.load()
    base = found.run.config if found.run is not None else {"task": found.task}
    if found.run is None and hasattr(model.config, "long_text"):  # windows, as it trained on
        base["data"] = {"long_text": "chunks", **model.config.long_text}
    fixed = {"model": {"checkpoint": found.ref}, "output_dir": ""}  # nothing is trained
    cfg = schema.with_overrides(base, overrides, fixed)
    modality = found.modality
    problem = problems.of_model(model.config)
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    if any(o.startswith("data.path=") for o in overrides) or found.run is None:
        inputs = modality.inputs(cfg.model.checkpoint, cfg.model.revision, cfg.data, cfg.augment)
        raw = load_raw_data(modality, cfg.data)
        split = _choose_split(raw, split, cfg.data.path)
        ds = _with_targets(raw[split], cfg.data, problem, labels, f"{cfg.data.path} ({split})")
        # Inputs encode whole splits; an empty validation split costs nothing. (Built empty:
        # a 0-row slice of `ds` breaks datasets' add_column, which audio's encode calls.)
        empty = datasets.Dataset.from_dict({c: [] for c in ds.column_names}, features=ds.features)
        encoded = inputs.encode(Splits(ds, empty, None, labels)).train
    else:
        data = load_data(modality, cfg.model, cfg.data, cfg.augment, cfg.seed, problem)
        inputs = data.inputs
        if data.raw.labels != labels:
            raise SftError(
                f"{cfg.data.path} now gives labels {data.raw.labels}, the model was trained on "
                f"{labels}; name the data to evaluate on with data.path=..."
            )
        split = split or ("test" if data.raw.test is not None else "validation")
        ds, encoded = data.raw.get(split), data.encoded.get(split)
        if ds is None:
            raise SftError(f"{cfg.data.path} has no '{split}' split; its splits: "
                           f"{sorted(name for name, _ in data.raw.items())}")  # fmt: skip
    name = Path(cfg.data.path).name or "data"
    report, evaluation, order = _evaluate(model, problem, labels, encoded, inputs, cfg, progress)
    where = {"split": split, "data": cfg.data.path, "model": found.ref}
    report = {"problem": problem.name, **where, **report}
    evaluated = Evaluated(evaluation, ds, order, inputs.column)
    return SavedEvaluation(report, evaluated, found, problem, name)


def _evaluate(model, problem: Problem, labels: list[str], encoded, inputs, cfg, progress: bool):
    """metrics.json's scores and timings, the evaluation, and its order (output_order)."""
    from sft.data.loaders import eval_loader, output_order
    from sft.training import scoring
    from sft.training.accelerator import device_type, fresh_accelerator, launcher_choice
    from sft.training.inference import inference_precision

    chosen = inference_precision(model, cfg.trainer.precision, device_type(), launcher_choice())
    accelerator = fresh_accelerator(mixed_precision=chosen.mixed_precision)
    model, loader = accelerator.prepare(
        model, eval_loader(encoded, inputs, cfg.trainer.eval_batch_size)
    )
    problem.load_metrics()  # seconds of imports, before the clock starts (as loading the model)
    start = time.perf_counter()
    result = scoring.evaluate(accelerator, model, loader, problem, progress, cfg.data.pool)
    tuned = problem.saved_rule(model.config)  # as tuned on the run's validation split
    result = problem.apply(result, tuned)
    seconds = time.perf_counter() - start
    report = {
        **problem.report(result.predictions, result.references, labels),
        **tuned,
        "loss": result.loss,
        "seconds": seconds,  # forward passes and scores: loading and encoding excluded
        "examples_per_s": len(result.references) / seconds,  # texts, where windows pool
        **chosen.report(accelerator),
    }
    return report, result, output_order(encoded, inputs)


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
