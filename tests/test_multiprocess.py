"""Two gloo processes on CPU through `accelerate launch`: the run completes, counts every test
example exactly once, and only rank zero writes the run directory."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_train_and_count_each_example_once(
    tmp_path, tiny_checkpoint, text_corpus
):
    run_dir = tmp_path / "run"
    accelerate = [sys.executable, "-m", "accelerate.commands.launch"]
    command = [
        *accelerate,
        "--multi_gpu",
        "--num_processes", "2",
        "--main_process_port", str(free_port()),
        "-m", "sft.train",
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        f"output_dir={run_dir}",
        "data.max_length=32",
        "trainer.epochs=2",
        "trainer.batch_size=4",
        "trainer.progress=false",
    ]  # fmt: skip
    # ACCELERATE_USE_CPU makes --multi_gpu start gloo processes on CPU (--cpu would start one).
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "x 2 processes" in result.stdout + result.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["num_examples"] == 15  # test.csv rows, none duplicated by the sampler
    assert sum(map(sum, metrics["confusion_matrix"])) == 15
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if r["kind"] == "train"]
    assert steps == sorted(set(steps))  # one writer: no step recorded twice
