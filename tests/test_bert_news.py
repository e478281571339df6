"""The offline default itself: the packaged all-MiniLM-L6-v2 on the packaged BBC News corpus,
through the CLI, on a small slice so that it takes seconds, not the full 15-minute run."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

TOPICS = ["business", "entertainment", "politics", "sports", "tech"]


def test_bert_news_default_runs_offline_on_real_model_and_corpus(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(
        "recipe=bert_news",
        f"output_dir={run_dir}",
        "data.max_train_samples=48",
        "data.max_eval_samples=20",
        "data.max_length=64",
        "trainer.max_steps=3",
        "trainer.progress=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert list(config["id2label"].values()) == TOPICS
    assert config["model_type"] == "bert" and config["num_hidden_layers"] == 6
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_examples"] == 20
