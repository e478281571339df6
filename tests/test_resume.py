"""Checkpoints and resume, on the tiny BERT: a run killed (SIGKILL) or preempted (SIGTERM) at a
fixed step and then run again ends with the history and metrics of an uninterrupted run; an
incomplete checkpoint is passed over for the previous complete one; a finished run is left as
it is; only the last K checkpoints stay while it runs.

The signals are sent to real processes (tests/helpers/interrupted_train.py signals itself after
a given optimizer step), each interrupted run made once for the module; every test resumes a
copy of one in this process (`run_cli`), and compares with one uninterrupted reference run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from sft.training.accelerator import cpu_bf16_units
from tests.conftest import run_cli, write_text_corpus

pytestmark = pytest.mark.slow

INTERRUPTED = Path(__file__).parent / "helpers" / "interrupted_train.py"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture(scope="module")
def overrides(base, tiny_checkpoint):
    # The rows of conftest's text_corpus: 54 train rows (after validation's) at batch 8: 7 steps
    # per epoch, 21 in all; checkpoints at steps 3, 6, 7 (epoch end), 9, 12, 14 (epoch end), 15,
    # 18.
    corpus = write_text_corpus(base / "corpus")
    return [
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={corpus}",
        "data.max_length=32",
        "trainer.batch_size=8",
        "trainer.epochs=3",
        "trainer.log_every=2",
        "trainer.checkpoint_every=3",
        "trainer.keep_checkpoints=2",
        "optimizer.lr=5e-3",
        "trainer.progress=false",
    ]


def interrupted(signal_name: str, at_step: int, *overrides: str, cwd: Path, **env: str):
    """`sft.train` with `overrides` in a new process that sends itself SIG<signal_name> right
    after optimizer step `at_step`; `env` adds to its environment."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "SFT_TEST_SIGNAL": signal_name,
        "SFT_TEST_SIGNAL_AT_STEP": str(at_step),
        **env,
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


@pytest.fixture(scope="module")
def uninterrupted(base, overrides):
    """The reference run, in this process; read only (a test that writes copies it)."""
    run_dir = base / "uninterrupted"
    result = run_cli(*overrides, f"output_dir={run_dir}", cwd=base)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir


# Each signal, the step it comes after, and the run directory it leaves.
STOPS = {"KILL": (11, "killed"), "TERM": (5, "preempted"), "INT": (5, "interrupted")}


@pytest.fixture(scope="module")
def stopped(base, overrides, uninterrupted):
    """Signal -> (run directory, its process) of the runs stopped as STOPS says, each once: the
    three processes at once, one thread each (their startup is most of their time). After the
    reference run, which leaves the datasets cache they read filled. Read only: tests resume
    copies."""

    def stop(signal_name: str):
        at_step, name = STOPS[signal_name]
        run_dir = base / name
        args = [*overrides, f"output_dir={run_dir}"]
        return run_dir, interrupted(signal_name, at_step, *args, cwd=base, OMP_NUM_THREADS="1")

    with ThreadPoolExecutor(len(STOPS)) as pool:
        return dict(zip(STOPS, pool.map(stop, STOPS), strict=True))


def copy_of(stopped_run: tuple[Path, subprocess.CompletedProcess], tmp_path: Path) -> Path:
    run_dir = tmp_path / stopped_run[0].name
    shutil.copytree(stopped_run[0], run_dir)
    return run_dir


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.is_dir())


def test_a_completed_run_removes_its_checkpoints(uninterrupted):
    assert outcome(uninterrupted)[1]["steps"] == 21
    assert not (uninterrupted / "checkpoints").exists()


def test_killed_run_resumed_equals_uninterrupted_run(tmp_path, overrides, uninterrupted, stopped):
    killed = stopped["KILL"][1]
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_dir = copy_of(stopped["KILL"], tmp_path)
    assert not (run_dir / "metrics.json").exists()
    assert checkpoint_names(run_dir) == ["step-00000007", "step-00000009"]  # the last K=2
    # Safetensors and JSON only. The best weights are step 7's (the only evaluation so far):
    # step 7 names its own model.safetensors, step 9 one file beside the checkpoints.
    stored = [p for p in (run_dir / "checkpoints").rglob("*") if p.is_file()]
    assert {p.suffix for p in stored} == {".safetensors", ".json"}
    assert [p.name for p in stored if p.name.startswith("best-")] == ["best-00000007.safetensors"]

    resumed = run_cli(*overrides, f"output_dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    assert outcome(run_dir) == outcome(uninterrupted)


def test_incomplete_checkpoint_is_passed_over(tmp_path, overrides, uninterrupted, stopped):
    assert stopped["KILL"][1].returncode == -signal.SIGKILL
    run_dir = copy_of(stopped["KILL"], tmp_path)
    weights = run_dir / "checkpoints" / "step-00000009" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a copy cut short

    resumed = run_cli(*overrides, f"output_dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert "ignoring checkpoint" in log and "model.safetensors has 1000 bytes" in log
    assert "step-00000007 (step 7, epoch 1)" in log
    assert outcome(run_dir) == outcome(uninterrupted)


def test_sigterm_checkpoints_and_stops_cleanly_then_resumes(
    tmp_path, overrides, uninterrupted, stopped
):
    preempted = stopped["TERM"][1]
    assert preempted.returncode == 0, preempted.stderr[-3000:]
    assert "stopped by SIGTERM at step 5" in preempted.stderr
    assert "Run the same command again" in preempted.stderr
    assert "Traceback" not in preempted.stderr
    run_dir = copy_of(stopped["TERM"], tmp_path)
    assert "step-00000005" in checkpoint_names(run_dir)
    assert not (run_dir / "metrics.json").exists()

    resumed = run_cli(*overrides, f"output_dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outcome(run_dir) == outcome(uninterrupted)


def test_ctrl_c_checkpoints_and_stops_then_resumes(tmp_path, overrides, uninterrupted, stopped):
    interrupted_run = stopped["INT"][1]
    assert interrupted_run.returncode == 130, interrupted_run.stderr[-3000:]  # as shells report
    assert "stopped by SIGINT at step 5" in interrupted_run.stderr
    assert "Traceback" not in interrupted_run.stderr
    run_dir = copy_of(stopped["INT"], tmp_path)
    assert "step-00000005" in checkpoint_names(run_dir)
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "model").exists()

    resumed = run_cli(*overrides, f"output_dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert outcome(run_dir) == outcome(uninterrupted)


def test_a_finished_run_is_left_as_it_is(tmp_path, overrides, uninterrupted):
    run_dir = tmp_path / "finished"
    shutil.copytree(uninterrupted, run_dir)  # the run again writes its log, lock and .hydra/
    before = (run_dir / "metrics.json").read_text()
    again = run_cli(*overrides, f"output_dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a finished run" in again.stdout + again.stderr
    assert (run_dir / "metrics.json").read_text() == before


def test_resume_never_starts_over(tmp_path, overrides, stopped):
    assert stopped["KILL"][1].returncode == -signal.SIGKILL
    run_dir = copy_of(stopped["KILL"], tmp_path)
    fresh = run_cli(*overrides, f"output_dir={run_dir}", "resume=never", cwd=tmp_path)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resuming from" not in fresh.stdout + fresh.stderr
    rows, _ = outcome(run_dir)
    assert rows[0]["step"] == 2 and len([r for r in rows if r["kind"] == "eval"]) == 3


@pytest.mark.skipif(
    "amx_bf16" not in cpu_bf16_units(), reason="no AMX: the stopped run ran in fp32 (auto)"
)
def test_a_bf16_checkpoint_resumes_in_fp32(tmp_path, overrides, uninterrupted, stopped):
    run_dir = copy_of(stopped["TERM"], tmp_path)  # stopped at step 5, in bf16 (auto)
    resumed = run_cli(*overrides, f"output_dir={run_dir}", "trainer.precision=fp32", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    (rows, metrics), reference = outcome(run_dir), outcome(uninterrupted)[1]
    assert (reference["precision"], metrics["precision"]) == ("bf16", "fp32")
    # The history says where the precision changed: after step 5's checkpoint.
    ran = [(r["step"], r["precision"]) for r in rows if r["kind"] == "train"]
    assert {p for s, p in ran if s <= 5} == {"bf16"} and {p for s, p in ran if s > 5} == {"fp32"}
    assert metrics["steps"] == reference["steps"] == 21
    assert metrics["accuracy"] == pytest.approx(reference["accuracy"], abs=0.1)
