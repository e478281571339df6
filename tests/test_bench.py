"""The benchmark harnesses run end to end, so that they cannot rot: the side-by-side harness
(bench/compare.py) on a tiny training job and a tiny evaluation job, sft and the stock Trainer
(bench/hf_trainer.py) at its defaults and at its best for the CPU, each once, on the tiny BERT;
the start-up benchmark (bench/startup.py) on an empty and a warm cache; and the precision
benchmark (bench/precision.py) on a tiny batch. They check that the tools ran and that the
reports hold every measure; how fast is the benchmarks' to say.

The harnesses are scripts that start their own processes one after another: all are started at
once, when the first test begins, each process with one thread (they share the cores), and each
test waits for its own."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sft.training.accelerator import cpu_bf16_units, cpu_name
from tests.conftest import ROOT

AUTO = "bf16" if "amx_bf16" in cpu_bf16_units() else "fp32"  # sft's precision=auto here

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harnesses(tmp_path_factory, tiny_checkpoint):
    """name -> (the started harness, its output folder, its log)."""
    commands = {
        "compare": lambda out: [
            sys.executable, str(ROOT / "bench" / "compare.py"), "--smoke", "--repeats", "1",
            "--checkpoint", str(tiny_checkpoint), "--out", str(out),
        ],
        "precision": lambda out: [
            sys.executable, str(ROOT / "bench" / "precision.py"), "--smoke", "--repeats", "1",
            "--out", str(out),
        ],
        "startup": lambda out: [
            sys.executable, str(ROOT / "bench" / "startup.py"), "--only", "text", "--rows", "300",
            "--out", str(out),
        ],
    }  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = {}
    try:
        for name, command in commands.items():
            out = tmp_path_factory.mktemp(name)
            log = out / "harness.log"
            with log.open("w") as sink:
                process = subprocess.Popen(
                    command(out), cwd=out, env=env, stdout=sink, stderr=subprocess.STDOUT
                )
            started[name] = (process, out, log)
        yield started
    finally:
        for process, _, _ in started.values():  # one a test did not wait for (deselected)
            if process.poll() is None:
                process.kill()
                process.wait()


def finished(harness) -> tuple:
    process, out, log = harness
    try:
        status = process.wait(timeout=900)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"still running after 900 s: {process.args}\n{log.read_text()[-3000:]}")
    assert status == 0, log.read_text()[-6000:]
    return out


def test_the_side_by_side_harness_runs_both_tools_and_reports(harnesses):
    out = finished(harnesses["compare"])
    results = json.loads((out / "results.json").read_text())
    assert results["matmul_gflops"]["fp32"] > 0
    assert cpu_name() in results["machine"]
    train, evaluation = results["jobs"]["smoke"], results["jobs"]["smoke evaluate"]
    assert train["gflop_per_example"] > 0
    # Trainer at its defaults, and at its best for this CPU; sft at its own defaults.
    assert train["trainer"]["precision"] == "fp32"
    assert train["trainer-best"]["precision"] == train["sft"]["precision"] == AUTO
    if AUTO == "bf16":
        assert results["matmul_gflops"]["bf16"] > results["matmul_gflops"]["fp32"]
    for tool in ("sft", "trainer", "trainer-best"):
        measured = train[tool]
        assert measured["train_samples_per_second"] > 0 and measured["wall_seconds"] > 0
        assert 0 < measured["startup_seconds"] < measured["wall_seconds"]
        assert measured["peak_rss_mib"] > 100  # a Python process with torch loaded
        assert 0 <= measured["accuracy"] <= 1 and 0 <= measured["f1"] <= 1
        assert evaluation[tool]["eval_samples_per_second"] > 0
    # Evaluation alone: both tools judged the same fine-tuned model on the same 40 texts; where
    # sft evaluates with bf16 weights, beside Trainer told to as well.
    assert evaluation["sft"]["accuracy"] == pytest.approx(evaluation["trainer"]["accuracy"])
    assert ("trainer-bf16-eval" in evaluation) == (AUTO == "bf16")
    if AUTO == "bf16":
        assert evaluation["trainer-bf16-eval"]["eval_samples_per_second"] > 0
    data = out / "data" / "short-24"  # written once, read by both
    assert len((data / "test.csv").read_text().splitlines()) == 201
    assert len((out / "data" / "short-24-40" / "test.csv").read_text().splitlines()) == 41
    table = (out / "results.md").read_text()
    assert "| smoke | sft |" in table and "| smoke | trainer |" in table
    assert f"| smoke | trainer-best | {AUTO} |" in table and results["machine"] in table
    assert "| smoke evaluate | sft |" in table and "eval samples/s" in table
    assert ("| smoke evaluate | trainer-bf16-eval |" in table) == (AUTO == "bf16")


def test_the_startup_benchmark_times_a_first_step_on_an_empty_and_a_warm_cache(harnesses):
    """bench/startup.py on 300 rows: both runs reach their first step and report it."""
    out = finished(harnesses["startup"])
    text = json.loads((out / "results.json").read_text())["text"]
    assert text["data"] == "text-300"
    for run in ("empty cache", "warm cache"):
        assert 0 < text[run]["startup_seconds"] < text[run]["wall_seconds"]
    rows = (out / "data" / "text-300" / "train.csv").read_text().splitlines()
    assert len(rows) == 301


def test_the_precision_benchmark_times_both_precisions_and_both_dropouts(harnesses):
    out = finished(harnesses["precision"])
    results = json.loads((out / "precision-best.json").read_text())
    assert results["cpu"] == cpu_name() and results["bf16_units"] == cpu_bf16_units()
    assert results["matmul_gflops"]["fp32"] > 0 and results["matmul_gflops"]["bf16"] > 0
    steps = results["ms"]["minilm"]
    assert set(steps) == {"train fp32", "train bf16", "forward fp32", "forward bf16"}
    dropouts = results["ms"]["minilm dropout"]
    assert {"train bf16", "train bf16, fast dropout", "train fp32, fast dropout"} <= set(dropouts)
    assert all(ms > 0 for ms in [*steps.values(), *dropouts.values()])
