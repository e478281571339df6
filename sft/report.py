"""The error-analysis page of a fine-tuned model:

    python -m sft.report RUN_DIR                                  # RUN_DIR/report.html
    python -m sft.report <RUN_DIR | model_dir> data.path=<data> [data.<key>=...] [split]

Without data, the run's own final split (test, else validation: split as training split it)
gives RUN_DIR/report.html, the page every training run writes at its end (sft/reporting/page.py):
headline scores, the run's plots, the per-label table worst first, calibration, and the most
confident mistakes with the examples themselves. With data (or a split), the model is evaluated
as sft.evaluate does, and metrics.json, the plot and report.html go to --output-dir (default
<run_dir>/evaluations/<data>-<split>): the run's own page is never replaced by another data's.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sft import cli
from sft.errors import SftError

log = logging.getLogger(__name__)


def report(
    source: str,
    overrides: list[str],
    split: str | None = None,
    output_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Write the report of the model in `source` (see the module's docstring); its path."""
    from sft.reporting.evaluation import evaluate_saved
    from sft.reporting.page import write_run_report
    from sft.runs.directory import RunDir

    run = RunDir(source)
    if overrides or split is not None:
        path = evaluate_saved(source, overrides, split, progress).write(output_dir)
    elif run.holds_model():
        if not run.finished():
            raise SftError(f"{run.root} holds no finished run (no metrics.json); train it first")
        metrics = run.read_metrics()
        saved = evaluate_saved(source, [], metrics["split"], progress)
        # The run's own scores and plots: the page shows the run as it finished.
        path = write_run_report(
            run,
            metrics,
            saved.evaluated,
            saved.found.modality,
            saved.problem,
            output_dir / "report.html" if output_dir is not None else None,
        )
    else:
        raise SftError(
            f"{source} is not a run directory: name the data to report on, data.path=<data>"
        )
    log.info("report: %s", path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = cli.evaluation_parser(
        "sft.report",
        "Write the error-analysis page (report.html) of a model.",
        "run directory (or model directory, with data.path=...)",
    )
    cli.run(parser, _report, argv)


def _report(args) -> Path:
    overrides, split = cli.data_overrides(args.args)
    if args.output_dir is not None:
        from sft.runs.directory import check_writable

        check_writable(args.output_dir, "--output-dir")
    return report(args.model, overrides, split, args.output_dir, not args.no_progress)


if __name__ == "__main__":
    main()
