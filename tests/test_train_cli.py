"""The real CLI, end to end, on a tiny BERT: every output of the run directory, and that
`transformers.pipeline` loads the saved model and agrees with the reported metrics; a multirun
gives each job a run directory of its own."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import CLASS_WORDS, run_cli

pytestmark = pytest.mark.slow


def test_model_dir_is_hugging_face_format_with_labels(trained_text_run):
    run_dir, _ = trained_text_run
    model_dir = run_dir / "model"
    assert (model_dir / "model.safetensors").is_file()
    assert (model_dir / "tokenizer.json").is_file()
    config = json.loads((model_dir / "config.json").read_text())
    assert config["id2label"] == {"0": "politics", "1": "sport", "2": "tech"}
    assert config["label2id"] == {"politics": 0, "sport": 1, "tech": 2}
    assert not (run_dir / "model.partial").exists()


def test_metrics_json_reports_the_test_split(trained_text_run):
    run_dir, _ = trained_text_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test"
    assert metrics["num_examples"] == 30
    assert set(metrics["per_class"]) == set(CLASS_WORDS)
    assert sum(map(sum, metrics["confusion_matrix"])) == 30
    assert 0 <= metrics["f1"] <= 1 and 0 <= metrics["accuracy"] <= 1
    assert metrics["accuracy"] >= 0.8, "the tiny model should learn the keyword corpus"


def test_pipeline_loads_the_model_and_matches_reported_accuracy(trained_text_run):
    import pandas as pd
    from transformers import pipeline

    run_dir, corpus = trained_text_run
    classify = pipeline("text-classification", model=str(run_dir / "model"), device="cpu")
    test = pd.read_csv(corpus / "test.csv")
    predicted = [p["label"] for p in classify(test["text"].tolist())]
    accuracy = sum(p == t for p, t in zip(predicted, test["label"], strict=True)) / len(test)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert accuracy == pytest.approx(metrics["accuracy"])


def test_history_has_train_and_eval_rows(trained_text_run):
    run_dir, _ = trained_text_run
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train"]
    evals = [r for r in rows if r["kind"] == "eval"]
    steps = [r["step"] for r in train]
    assert steps == sorted(steps) and steps[0] == 2
    assert len(evals) == 10  # one per epoch
    assert {"loss", "lr", "examples_per_s"} <= set(train[0])
    assert {"loss", "accuracy", "f1", "best"} <= set(evals[0])
    assert train[-1]["loss"] < train[0]["loss"]


def test_plots_are_png_files(trained_text_run):
    run_dir, _ = trained_text_run
    for name in ("loss.png", "accuracy.png", "confusion_matrix.png"):
        data = (run_dir / "plots" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name


def test_config_yaml_is_resolved(trained_text_run, tiny_checkpoint):
    run_dir, corpus = trained_text_run
    text = (run_dir / "config.yaml").read_text()
    assert "${" not in text
    saved = yaml.safe_load(text)
    assert saved["model"]["checkpoint"] == str(tiny_checkpoint)
    assert saved["data"]["path"] == str(corpus)
    assert saved["trainer"]["epochs"] == 10


def test_multirun_gives_each_job_its_own_run_directory(tmp_path, tiny_checkpoint, text_corpus):
    # dry_run: each job composes its config, builds data and model and writes its run directory
    # (config.yaml, param_groups.json), then stops before training. Jobs that train to the end
    # in their directories are test_sweep.py's sweep, which checks the same of each of them.
    # The jobs run one after another in this process, each in its own precision.
    sweep = tmp_path / "sweep"
    result = run_cli(
        "-m",
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        "data.max_length=32",
        "dry_run=true",
        "optimizer.lr=1e-3,2e-3",
        "trainer.precision=bf16,fp32",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    jobs = [("0", 1e-3, "bf16"), ("1", 1e-3, "fp32"), ("2", 2e-3, "bf16"), ("3", 2e-3, "fp32")]
    for job, lr, precision in jobs:
        saved = yaml.safe_load((sweep / job / "config.yaml").read_text())
        assert saved["optimizer"]["lr"] == lr and saved["trainer"]["precision"] == precision
        log = (sweep / job / "train.log").read_text()
        assert f"precision {precision} (trainer.precision={precision})" in log
        assert saved["output_dir"] == str(sweep / job)
        groups = json.loads((sweep / job / "param_groups.json").read_text())
        assert groups, "each job built its own model and optimizer in its own directory"
    assert not (tmp_path / "multirun").exists()  # hydra.sweep.dir chose the sweep's directory
