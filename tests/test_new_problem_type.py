"""CONTRIBUTING.md's claim that a new problem type is one module and one registry line: a toy
type (single-label targets, a multi-class hinge loss, accuracy as its only score), registered in
`PROBLEMS` and nowhere else, trains a run end to end through the CLI."""

from __future__ import annotations

import json

import pytest
import torch.nn.functional as F

from sft.problems import PROBLEMS, CardMetric, metrics
from sft.problems.single_label import SingleLabel
from tests.conftest import FAST, run_cli, run_tiny_text


class Hinge(SingleLabel):
    """Single-label targets (read as SingleLabel reads them) trained with a multi-class hinge
    loss (Crammer-Singer, torch's multi_margin_loss) and scored by accuracy alone."""

    name = "hinge"
    metrics = ("accuracy",)
    metric_modules = (("accuracy", None),)
    card_metrics = (CardMetric("accuracy", "accuracy", "Accuracy"),)
    settings = ()
    tag = "hinge-loss"

    def loss(self, cfg, train_targets, num_labels):
        return lambda logits, targets: F.multi_margin_loss(logits.float(), targets)

    def eval_loss(self, logits, targets) -> float:
        return F.multi_margin_loss(logits.float(), targets).item()

    def scores(self, predictions, references) -> dict[str, float]:
        args = {"predictions": predictions.tolist(), "references": references.tolist()}
        return {"accuracy": float(metrics.module("accuracy").compute(**args)["accuracy"])}


def test_an_unregistered_problem_type_is_refused_naming_the_registered_ones(tmp_path):
    result = run_cli("recipe=bert_news", "problem=hinge", "dry_run=true", cwd=tmp_path)
    assert result.returncode == 2
    assert "problem=hinge is not allowed: use one of single_label, multi_label, regression" in (
        result.stderr
    )


@pytest.mark.slow
def test_a_problem_type_registered_in_one_line_trains_a_run(
    monkeypatch, tmp_path, tiny_checkpoint, text_corpus
):
    monkeypatch.setitem(PROBLEMS, "hinge", Hinge())
    _, run_dir = run_tiny_text(tmp_path, tiny_checkpoint, text_corpus, "problem=hinge", *FAST)

    result = json.loads((run_dir / "metrics.json").read_text())
    assert result["problem"] == "hinge"
    assert set(result["validation"]) == {"loss", "accuracy"}  # its scores, and only those
    assert "f1" not in result and result["accuracy"] > 0.5  # 3 classes: better than chance
    assert (run_dir / "plots" / "confusion_matrix.png").is_file()  # drawn as it says
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    evals = [row for row in history if row["kind"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"]  # the hinge loss it trains with falls
    config = (run_dir / "config.yaml").read_text()
    assert "problem: hinge" in config and "metric: accuracy" in config  # auto: its first metric
