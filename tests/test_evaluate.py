"""`python -m sft.evaluate`: a run (or its model directory) on another data set, labels matched
by name whatever their order there; metrics equal the model's own predictions; unknown labels,
missing splits and missing data named."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import torch

from tests.conftest import make_rows, run_cli, run_process

pytestmark = pytest.mark.slow


def evaluate(*args, cwd, process: bool = False) -> subprocess.CompletedProcess:
    """The command in this process, or (`process`) in its own, as a user starts it."""
    run = run_process if process else run_cli
    return run(*map(str, args), cwd=cwd, module="sft.evaluate")


@pytest.fixture
def text_run(tmp_path, trained_text_run):
    """A copy of the shared finished run: this command writes into the run directory."""
    return Path(shutil.copytree(trained_text_run[0], tmp_path / "run"))


@pytest.fixture
def other_data(tmp_path):
    """A CSV split file set whose label column is named differently."""
    root = tmp_path / "other"
    root.mkdir()
    rows = pd.DataFrame(make_rows(4, seed=7)).rename(columns={"label": "topic"})
    rows.to_csv(root / "test.csv", index=False)
    rows.head(3).to_csv(root / "train.csv", index=False)
    return root, rows


def test_metrics_match_the_models_predictions(tmp_path, text_run, other_data):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    root, rows = other_data
    args = (text_run, f"data.path={root}", "data.label_column=topic")
    result = evaluate(*args, cwd=tmp_path, process=True)  # `python -m sft.evaluate`, once
    assert result.returncode == 0, result.stderr[-3000:]
    out = text_run / "evaluations" / "other-test"
    report = json.loads((out / "metrics.json").read_text())
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert report["split"] == "test" and report["num_examples"] == len(rows)
    assert report["examples_per_s"] == pytest.approx(len(rows) / report["seconds"])

    model = AutoModelForSequenceClassification.from_pretrained(text_run / "model").eval()
    tokenizer = AutoTokenizer.from_pretrained(text_run / "model")
    with torch.no_grad():
        batch = tokenizer(rows["text"].tolist(), return_tensors="pt", padding=True, truncation=True)
        predicted = [model.config.id2label[int(i)] for i in model(**batch).logits.argmax(-1)]
    accuracy = sum(p == t for p, t in zip(predicted, rows["topic"], strict=True)) / len(rows)
    assert report["accuracy"] == pytest.approx(accuracy)
    assert report["labels"] == [model.config.id2label[i] for i in range(len(report["labels"]))]


def test_a_model_directory_and_a_named_split(tmp_path, text_run, other_data):
    root, _ = other_data
    out = tmp_path / "eval"
    args = (f"data.path={root}", "data.label_column=topic", "train", "--output-dir", out)
    result = evaluate(text_run / "model", *args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["num_examples"] == 3


def test_labels_the_model_does_not_know_are_named(tmp_path, text_run, other_data):
    root, rows = other_data
    rows.loc[0, "topic"] = "weather"
    rows.to_csv(root / "test.csv", index=False)
    result = evaluate(text_run, f"data.path={root}", "data.label_column=topic", cwd=tmp_path)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "has label(s) ['weather'] that train never saw" in last
    assert "train labels: [" in last


def test_a_missing_split_or_data_path_is_named(tmp_path, text_run, other_data):
    root, _ = other_data
    missing = evaluate(
        text_run, f"data.path={root}", "data.label_column=topic", "dev", cwd=tmp_path
    )
    assert missing.returncode == 2
    assert "has no 'dev' split; its splits: ['test', 'train']" in missing.stderr
    no_data = evaluate(text_run, cwd=tmp_path)
    assert no_data.returncode == 2
    assert "name the data to evaluate on: data.path=" in no_data.stderr
