"""Checkpoints and resume, on the tiny BERT: a run killed (SIGKILL) or preempted (SIGTERM) at a
fixed step and then run again ends with the history and metrics of an uninterrupted run; an
incomplete checkpoint is passed over for the previous complete one; a finished run is left as
it is; only the last K checkpoints stay while it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow

INTERRUPTED = Path(__file__).parent / "helpers" / "interrupted_train.py"


@pytest.fixture
def overrides(tiny_checkpoint, text_corpus):
    # 54 train rows at batch 8: 7 steps per epoch, 21 in all; checkpoints at steps 3, 6, 7
    # (epoch end), 9, 12, 14 (epoch end), 15, 18.
    return [
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        "data.max_length=32",
        "trainer.batch_size=8",
        "trainer.epochs=3",
        "trainer.log_every=2",
        "trainer.checkpoint_every=3",
        "trainer.keep_checkpoints=2",
        "optimizer.lr=5e-3",
        "trainer.progress=false",
    ]


def interrupted(signal_name: str, at_step: int, *overrides: str, cwd: Path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SFT_TEST_SIGNAL": signal_name,
        "SFT_TEST_SIGNAL_AT_STEP": str(at_step),
    }
    return subprocess.run(
        [sys.executable, str(INTERRUPTED), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def outcome(run_dir: Path):
    """History and metrics without the wall-clock fields."""
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("examples_per_s", None)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    metrics.pop("train_seconds"), metrics.pop("startup_seconds")
    return rows, metrics


@pytest.fixture
def uninterrupted(tmp_path, overrides):
    run_dir = tmp_path / "uninterrupted"
    result = run_cli(*overrides, f"output_dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())


def test_a_completed_run_removes_its_checkpoints(uninterrupted):
    assert outcome(uninterrupted)[1]["steps"] == 21
    assert not (uninterrupted / "checkpoints").exists()


def test_killed_run_resumed_equals_uninterrupted_run(tmp_path, overrides, uninterrupted):
    run_dir = tmp_path / "killed"
    args = [*overrides, f"output_dir={run_dir}"]
    killed = interrupted("KILL", 11, *args, cwd=tmp_path)
    assert killed.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.json").exists()
    assert checkpoint_names(run_dir) == ["step-00000007", "step-00000009"]  # the last K=2
    # Safetensors and JSON only. The best weights are step 7's (the only evaluation so far):
    # step 7 names its own model.safetensors, step 9 one file beside the checkpoints.
    stored = [p for p in (run_dir / "checkpoints").rglob("*") if p.is_file()]
    assert {p.suffix for p in stored} == {".safetensors", ".json"}
    assert [p.name for p in stored if p.name.startswith("best-")] == ["best-00000007.safetensors"]

    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert outcome(run_dir) == outcome(uninterrupted)


def test_incomplete_checkpoint_is_passed_over(tmp_path, overrides, uninterrupted):
    run_dir = tmp_path / "killed"
    args = [*overrides, f"output_dir={run_dir}"]
    assert interrupted("KILL", 11, *args, cwd=tmp_path).returncode == -signal.SIGKILL
    weights = run_dir / "checkpoints" / "step-00000009" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short

    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "ignoring checkpoint" in log and "model.safetensors has 1000 bytes" in log
    assert "step-00000007 (step 7, epoch 1)" in log
    assert outcome(run_dir) == outcome(uninterrupted)


def test_sigterm_checkpoints_and_stops_cleanly_then_resumes(tmp_path, overrides, uninterrupted):
    run_dir = tmp_path / "preempted"
    args = [*overrides, f"output_dir={run_dir}"]
    preempted = interrupted("TERM", 5, *args, cwd=tmp_path)
    assert preempted.returncode == 0, preempted.stderr[-3000:]
    assert "stopped by SIGTERM at step 5" in preempted.stderr
    assert "Run the same command again" in preempted.stderr
    assert "Traceback" not in preempted.stderr
    assert "step-00000005" in checkpoint_names(run_dir)
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outcome(run_dir) == outcome(uninterrupted)


def test_ctrl_c_checkpoints_and_stops_then_resumes(tmp_path, overrides, uninterrupted):
    run_dir = tmp_path / "interrupted"
    args = [*overrides, f"output_dir={run_dir}"]
    stopped = interrupted("INT", 5, *args, cwd=tmp_path)
    assert stopped.returncode == 130, stopped.stderr[-3000:]  # as shells report Ctrl-C
    assert "stopped by SIGINT at step 5" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert "step-00000005" in checkpoint_names(run_dir)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()

    resumed = run_cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outcome(run_dir) == outcome(uninterrupted)


def test_a_finished_run_is_left_as_it_is(tmp_path, overrides, uninterrupted):
    before = (uninterrupted / "metrics.json").read_text()
    again = run_cli(*overrides, f"output_dir={uninterrupted}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a finished run" in again.stdout + again.stderr
    assert (uninterrupted / "metrics.json").read_text() == before


def test_resume_never_starts_over(tmp_path, overrides):
    run_dir = tmp_path / "killed"
    args = [*overrides, f"output_dir={run_dir}"]
    assert interrupted("KILL", 11, *args, cwd=tmp_path).returncode == -signal.SIGKILL
    fresh = run_cli(*args, "resume=never", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resuming from" not in fresh.stdout + fresh.stderr
    rows, _ = outcome(run_dir)
    assert rows[0]["step"] == 2 and len([r for r in rows if r["kind"] == "eval"]) == 3
