"""report.html: one self-contained page (plots, thumbnails and clips inline; no network, no
JavaScript) of how a model did on one split and where it goes wrong: the headline scores, the
run's plots, the per-label table worst first, calibration, and the most confident mistakes with
the examples themselves. The problem type (sft/problems/) says what a mistake is; the modality
(sft/modalities/) how an example looks."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from sft.errors import SftError
from sft.modalities import Modality, Preview, data_uri

if TYPE_CHECKING:
    import datasets

    from sft.problems import Problem
    from sft.runs.directory import RunDir
    from sft.training.job import Job
    from sft.training.state import Evaluation

TOP = 50  # mistakes shown: enough to see a pattern, few enough to read

# The plots a run or an evaluation draws (sft/problems/plots.py), by section, with captions.
PLOTS = {
    "training": {"loss.png": "Loss", "accuracy.png": "Validation scores",
                 "scores.png": "Validation scores"},
    "outcome": {"confusion_matrix.png": "Confusion matrix (rows: true, columns: predicted)",
                "per_label.png": "Scores per label", "predicted.png": "Predicted against true"},
    "calibration": {"reliability.png": "Reliability before and after calibration"},
}  # fmt: skip


@dataclass
class Evaluated:
    """An evaluation's outputs and the examples they belong to: output row i is example
    `examples[order[i]]` (`order`: sft.data.loaders.output_order)."""

    evaluation: Evaluation
    examples: datasets.Dataset  # the split as read (raw inputs), targets included
    order: list[int]
    column: str  # the input column

    @classmethod
    def of_run(cls, job: Job, split: str, evaluation: Evaluation) -> Evaluated:
        """`evaluation` of the run's `split`, beside that split's examples as read."""
        from sft.data.loaders import output_order

        order = output_order(job.splits.get(split), job.inputs)
        return cls(evaluation, job.raw.get(split), order, job.inputs.column)


def draw_run(run: RunDir, result: dict[str, Any], final: Evaluation, job: Job) -> Path:
    """What a finished run shows people: plots/ (the history's curves, the problem's plot of
    the `final` evaluation, whose scores are `result`) and report.html; its path."""
    from sft.problems import plots  # matplotlib: only when drawing

    plots.plot_curves(run.read_history(), run.plots)
    job.problem.plot_outcome(result, final, result["split"], run.plots)
    evaluated = Evaluated.of_run(job, result["split"], final)
    return write_run_report(run, result, evaluated, job.modality, job.problem)


def write_run_report(
    run: RunDir,
    result: dict[str, Any],
    evaluated: Evaluated,
    modality: Modality,
    problem: Problem,
    path: Path | None = None,
) -> Path:
    """The report of a finished run (at `path`, by default <run>/report.html): its final
    split's scores (`result`: metrics.json), its plots, and `evaluated`'s mistakes."""
    config = run.read_config()
    about = {"model": config.model.checkpoint, "data": config.data.path, **result}
    plots, title = sorted(run.plots.glob("*.png")), f"{run.root.name} ({result['split']})"
    return write_report(path or run.report, about, evaluated, modality, problem, plots, title)


def write_report(
    path: Path,
    result: dict[str, Any],
    evaluated: Evaluated,
    modality: Modality,
    problem: Problem,
    plots: list[Path],
    title: str,
    top: int = TOP,
) -> Path:
    """report.html at `path` for the evaluation `result` (its metrics.json) of `evaluated`,
    with the PNGs of `plots` that exist; written whole or not at all."""
    labels = result["labels"]
    found = problem.mistakes(evaluated.evaluation, labels)
    shown = [
        {
            "truth": m.truth,
            "predicted": m.predicted,
            "score": m.score,
            "example": _preview(modality, evaluated, m.row),
        }
        for m in found[:top]
    ]
    header, rows = problem.worst_first(result)
    page = _template().render(
        title=title,
        created=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        about=_about(result),
        headline=_headline(result, problem),
        plots={section: _images(plots, captions) for section, captions in PLOTS.items()},
        table={"header": header, "rows": rows},
        calibration=_calibration(result),
        mistakes={
            "title": problem.mistakes_title,
            "score": problem.mistake_score,
            "found": len(found),
            "total": len(evaluated.evaluation.references),
            "shown": shown,
        },
    )
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(page, encoding="utf-8")
        os.replace(partial, path)
    finally:  # after a failure (a full disk): no half-written page left beside the run
        partial.unlink(missing_ok=True)
    return path


def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,  # texts are the user's data: never markup
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2")


def _preview(modality: Modality, evaluated: Evaluated, row: int) -> Preview:
    value = evaluated.examples[evaluated.order[row]][evaluated.column]
    try:
        return modality.preview(value)
    except SftError as err:  # moved or deleted since: the row stays, the example says why
        return Preview("text", f"(cannot be shown: {err})")


def _about(result: dict[str, Any]) -> list[tuple[str, str]]:
    keys = {"model": "model", "data": "data", "split": "split", "num_examples": "examples",
            "precision": "precision"}  # fmt: skip
    return [(name, str(result[key])) for key, name in keys.items() if key in result]


def _headline(result: dict[str, Any], problem: Problem) -> list[tuple[str, str]]:
    """The problem's scores, the loss, the calibrated temperature or tuned threshold, and the
    share of targets within their interval (regression)."""
    keys = [*problem.metrics, "loss", "calibration_temperature", "multi_label_threshold",
            "interval_covered"]  # fmt: skip
    return [(key, _number(result[key])) for key in keys if key in result]


def _number(value: Any) -> str:
    return "undefined" if value is None or value != value else f"{value:.4f}"


def _images(plots: list[Path], captions: dict[str, str]) -> list[dict[str, str]]:
    """The PNGs of `plots` that `captions` names and that exist, in the order it names them."""
    by_name = {p.name: p for p in plots if p.is_file()}
    return [
        {"caption": caption, "src": data_uri(by_name[name].read_bytes(), "image/png")}
        for name, caption in captions.items()
        if name in by_name
    ]


def _calibration(result: dict[str, Any]) -> list[dict[str, Any]]:
    """ECE, NLL and Brier score before and after calibration, per split that has them."""
    rows = []
    for split, scores in result.get("calibration", {}).items():
        for key in ("ece", "nll", "brier"):
            before, after = scores["before"][key], scores["after"][key]
            rows.append({"split": split, "score": key.upper() if key != "brier" else "Brier",
                         "before": _number(before), "after": _number(after)})  # fmt: skip
    return rows
