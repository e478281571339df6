"""A command that does not run leaves a run directory as it was, byte for byte — Hydra's record
of the launch (.hydra/), the log and the lock file included: a finished run and a live one,
each given every refused command, are found unchanged afterwards."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest

from tests.conftest import FAST, run_cli
from tests.test_bad_input import error_line


def snapshot(run_dir) -> dict[str, str]:
    """Every file and folder under `run_dir`, with a digest of each file's bytes."""
    return {
        str(path.relative_to(run_dir)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(run_dir.rglob("*"))
    }


@pytest.fixture
def finished(tmp_path, trained_text_run, tiny_checkpoint):
    """A copy of the shared finished run, and the command line that trained it (into the copy)."""
    source, corpus = trained_text_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    args = [
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={corpus}",
        f"output_dir={run_dir}",
        *FAST,
    ]
    return run_dir, args


def test_the_same_command_on_a_finished_run_has_nothing_to_do_and_writes_nothing(
    tmp_path, finished
):
    run_dir, args = finished
    before = snapshot(run_dir)
    assert {".hydra/config.yaml", "train.log", ".lock", "metrics.json"} <= set(before)
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "holds a finished run (metrics.json): nothing to do" in result.stdout + result.stderr
    assert snapshot(run_dir) == before


REFUSED = {
    "other settings": (
        ["optimizer.lr=1e-3", "trainer.epochs=3"],
        "holds a finished run with other settings (optimizer.lr: 0.005 -> 0.001; "
        "trainer.epochs: 10 -> 3); choose a new output_dir, or add resume=never",
    ),
    "missing data, starting over": (["data.path=/nowhere", "resume=never"], "does not exist"),
    "a value out of range": (["trainer.epochs=-1"], "trainer.epochs=-1"),
    "an unknown key": (["+trainer.warmup=10"], "trainer.warmup"),
}


@pytest.mark.parametrize("overrides", REFUSED.values(), ids=list(REFUSED))
def test_a_refused_command_leaves_a_finished_run_as_it_was(tmp_path, finished, overrides):
    run_dir, args = finished
    extra, message = overrides
    before = snapshot(run_dir)
    result = run_cli(*args, *extra, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert message in error_line(result.stderr)
    assert snapshot(run_dir) == before


HOLD = """
import sys, time
from sft.runs.directory import RunDir
run = RunDir(sys.argv[1])
run.lock()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.mark.slow
def test_a_refused_command_leaves_a_live_run_as_it_was(tmp_path, finished):
    # A run still going: no metrics.json yet, and a process holding the directory (the lock is
    # a process's, so another process holds it here).
    run_dir, args = finished
    (run_dir / "metrics.json").unlink()
    live = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout.readline().strip() == "locked"
        before = snapshot(run_dir)
        for extra in ([], ["resume=never"], ["optimizer.lr=1e-3"]):
            result = run_cli(*args, *extra, cwd=tmp_path)
            assert result.returncode == 2, result.stderr[-3000:]
            line = error_line(result.stderr)
            assert f"output_dir {run_dir} is in use by a run that is still going" in line
            assert snapshot(run_dir) == before, extra
    finally:
        live.kill()
        live.wait()


@pytest.mark.slow
def test_the_same_command_with_a_push_retries_the_push_and_leaves_the_run(
    tmp_path, finished, monkeypatch
):
    # After a push at the end of training failed, the message says to retry; re-running the
    # training command is the retry a user tries first: it pushes the finished run as it is.
    from tests.hub_server import HubServer
    from tests.test_push import TOKEN, use_hub_env

    run_dir, args = finished
    before = snapshot(run_dir)
    with HubServer(TOKEN) as hub:
        use_hub_env(monkeypatch, hub, tmp_path, HF_TOKEN=TOKEN)
        result = run_cli(*args, "push_to_hub=true", "hub.repo_id=me/retried", cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "nothing to do" in result.stdout + result.stderr
        assert "model.safetensors" in hub.repos["me/retried"].files
    assert snapshot(run_dir) == before
