"""The side-by-side harness (bench/compare.py) runs end to end, so that it cannot rot: a tiny
training job and a tiny evaluation job, sft and the stock Trainer (bench/hf_trainer.py) each
once, on the tiny BERT. It checks that both ran and that the report holds every measure; how
fast is the benchmark's to say."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_the_side_by_side_harness_runs_both_tools_and_reports(tmp_path, tiny_checkpoint):
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare.py"), "--smoke", "--repeats", "1",
         "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["matmul_gflops"] > 0
    train, evaluation = results["jobs"]["smoke"], results["jobs"]["smoke evaluate"]
    assert train["gflop_per_example"] > 0
    for tool in ("sft", "trainer"):
        measured = train[tool]
        assert measured["train_samples_per_second"] > 0 and measured["wall_seconds"] > 0
        assert 0 < measured["startup_seconds"] < measured["wall_seconds"]
        assert measured["peak_rss_mib"] > 100  # a Python process with torch loaded
        assert 0 <= measured["accuracy"] <= 1 and 0 <= measured["f1"] <= 1
        assert evaluation[tool]["eval_samples_per_second"] > 0
    # Evaluation alone: both tools judged the same fine-tuned model on the same 40 texts.
    assert evaluation["sft"]["accuracy"] == pytest.approx(evaluation["trainer"]["accuracy"])
    data = tmp_path / "data" / "short-24"  # written once, read by both
    assert len((data / "test.csv").read_text().splitlines()) == 201
    assert len((tmp_path / "data" / "short-24-40" / "test.csv").read_text().splitlines()) == 41
    table = (tmp_path / "results.md").read_text()
    assert "| smoke | sft |" in table and "| smoke | trainer |" in table
    assert "| smoke evaluate | sft |" in table and "eval samples/s" in table


def test_the_startup_benchmark_times_a_first_step_on_an_empty_and_a_warm_cache(tmp_path):
    """bench/startup.py on 300 rows: both runs reach their first step and report it."""
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "startup.py"), "--only", "text", "--rows", "300",
         "--out", str(tmp_path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    text = json.loads((tmp_path / "results.json").read_text())["text"]
    assert text["data"] == "text-300"
    for run in ("empty cache", "warm cache"):
        assert 0 < text[run]["startup_seconds"] < text[run]["wall_seconds"]
    rows = (tmp_path / "data" / "text-300" / "train.csv").read_text().splitlines()
    assert len(rows) == 301
