"""Evaluate a fine-tuned model on any data set the training data layer reads:

    python -m sft.evaluate <run_dir | model_dir> data.path=<data> [data.<key>=...] [split]

Writes metrics.json (accuracy, macro-F1, per-class report, confusion matrix, examples/s), the
problem's plot (confusion_matrix.png) and report.html (sft/reporting/page.py) to --output-dir
(default <run_dir>/evaluations/<data>-<split>, or evaluations/<data>-<split> beside a model
directory). Labels are matched to the model's by name; a label the model does not know is an
error that lists both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sft import cli
from sft.errors import SftError

log = logging.getLogger(__name__)


def evaluate_model(
    source: str,
    overrides: list[str],
    split: str | None,
    output_dir: Path | None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of the model in `source` on the data the overrides name; writes them out."""
    from sft.reporting.evaluation import evaluate_saved

    saved = evaluate_saved(source, overrides, split, progress)
    report, out = saved.report, saved.write(output_dir).parent
    scores = ", ".join(f"{k} {report[k]:.4f}" for k in saved.problem.metrics)
    examples, ran = report["num_examples"], report["precision"]
    log.info("%s %s: %s on %d examples (%s) -> %s", saved.name, report["split"], scores,
             examples, ran, out)  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> None:
    parser = cli.evaluation_parser(
        "sft.evaluate",
        "Evaluate a fine-tuned model on a data set.",
        "run directory or model directory",
    )
    cli.run(parser, _evaluate, argv)


def _evaluate(args) -> None:
    overrides, split = cli.data_overrides(args.args)
    if not any(o.startswith("data.path=") for o in overrides):
        raise SftError("name the data to evaluate on: data.path=<hub id, file or directory>")
    evaluate_model(args.model, overrides, split, args.output_dir, not args.no_progress)


if __name__ == "__main__":
    main()
