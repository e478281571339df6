"""Bad environments and bad command inputs, through the commands' own `main`: an unwritable
output_dir, a full disk, a bad input aimed at a finished run, commands given a directory that is
no run, a push without a token. Each ends in one `error:` line naming the culprit and the fix.

A full disk is a file-size limit on a child process (`python -m sft.train`); every other command
runs in this process (`run_cli`)."""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import pytest

from sft.training.checkpoint import incomplete
from tests import test_push
from tests.conftest import run_cli
from tests.test_bad_input import error_line
from tests.test_push import push_here, use_hub_env

hub = test_push.hub  # the fixture: a local hub server

pytestmark = pytest.mark.slow

# What the tiny text runs here train with: a few steps of milliseconds each.
TINY = ["trainer.epochs=2", "trainer.batch_size=16", "data.max_length=32", "trainer.progress=false"]
FILE_LIMIT = 50_000  # bytes: above every log and config file, below the tiny model's weights


TRAIN = [sys.executable, "-m", "sft.train"]


def train_args(checkpoint, corpus, run_dir, *overrides: str) -> list[str]:
    return [
        f"model.checkpoint={checkpoint}", f"data.path={corpus}", f"output_dir={run_dir}", *TINY,
        *overrides,
    ]  # fmt: skip


def limited_env() -> dict[str, str]:
    """The environment of a child whose file size gets limited, less COVERAGE_PROCESS_CONFIG:
    coverage's data file, written as the child exits, would pass the limit and fail the child."""
    env = {k: v for k, v in os.environ.items() if k != "COVERAGE_PROCESS_CONFIG"}
    return {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def no_writes_past_the_limit() -> None:
    """In the child: a write past FILE_LIMIT bytes fails with EFBIG, as on a full disk (the
    signal it would also raise is ignored, as Python itself does)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def disk_full_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-4000:]
    line = error_line(stderr)
    assert "File too large (no space left on the disk, or a file-size limit" in line
    assert "free some space and run the same command again" in line
    return line


def test_output_dir_in_a_read_only_folder_is_refused_even_for_root(
    tmp_path, tiny_checkpoint, text_corpus
):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)  # root could write here anyway: sft refuses it all the same
    run_dir = locked / "runs" / "one"
    result = run_cli(
        f"model.checkpoint={tiny_checkpoint}", f"data.path={text_corpus}",
        f"output_dir={run_dir}", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert f"output_dir {run_dir} cannot be written: {locked} is read-only (dr-xr-xr-x)" in line
    assert "choose another output_dir" in line
    assert list(locked.iterdir()) == []  # Hydra did not create it either


def test_disk_full_while_writing_the_model_leaves_no_result(tmp_path, tiny_checkpoint, text_corpus):
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [*TRAIN, *train_args(tiny_checkpoint, text_corpus, run_dir, "trainer.keep_checkpoints=0")],
        cwd=tmp_path, env=limited_env(), capture_output=True, text=True, timeout=600,
        preexec_fn=no_writes_past_the_limit,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    line = disk_full_line(result.stderr)
    assert f"could not write {run_dir / 'model.partial' / 'model.safetensors'}" in line
    # A run may end before its first checkpoint: the way on promises none that may not exist.
    assert "(training continues from its last complete checkpoint, if it wrote one, else " in line
    assert not (run_dir / "model").exists() and not (run_dir / "metrics.json").exists()
    assert not (run_dir / "model.partial").exists()  # its space is given back


def test_disk_full_during_a_checkpoint_keeps_the_last_one_and_resume_finishes(
    tmp_path, tiny_checkpoint, text_corpus
):
    run_dir = tmp_path / "run"
    args = train_args(
        tiny_checkpoint, text_corpus, run_dir,
        "trainer.epochs=10", "trainer.checkpoint_every=1",
    )  # fmt: skip
    child = subprocess.Popen(
        [*TRAIN, *args], cwd=tmp_path, env=limited_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not list(run_dir.glob("checkpoints/step-*/complete.json")):
        assert child.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    # The disk fills up: every later write past the limit fails (the next checkpoint's weights).
    resource.prlimit(child.pid, resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    _, stderr = child.communicate(timeout=600)
    assert child.returncode == 2, stderr[-3000:]
    line = disk_full_line(stderr)
    assert f"could not write {run_dir / 'checkpoints'}" in line
    assert not (run_dir / "model").exists() and not (run_dir / "metrics.json").exists()
    complete = sorted(run_dir.glob("checkpoints/step-*"))
    assert complete and incomplete(complete[-1]) is None

    # The same command again, once space is freed: in this process (no limit here).
    again = run_cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {complete[-1]}" in again.stdout + again.stderr
    assert (run_dir / "metrics.json").is_file()


def snapshot(run_dir) -> dict[str, str]:
    """Every file of a run (Hydra's record of the launch, the log and the lock file included)
    and a digest of its contents."""
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file()
    }


def test_bad_input_aimed_at_a_finished_run_leaves_it_untouched(
    tmp_path, trained_text_run, tiny_checkpoint
):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_text_run[0], run_dir)
    before = snapshot(run_dir)
    assert "metrics.json" in before and "model/model.safetensors" in before
    # resume=never starts over: it used to clear the results before finding the data missing.
    result = run_cli(
        f"model.checkpoint={tiny_checkpoint}", f"data.path={tmp_path / 'nowhere'}",
        f"output_dir={run_dir}", "resume=never", "trainer.progress=false", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "does not exist" in error_line(result.stderr)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_a_command_on_a_directory_that_is_no_run_nor_model(tmp_path, text_corpus, command):
    # (sft.export: tests/test_export.py::test_a_directory_without_a_model_is_named)
    stray = tmp_path / "notes"
    stray.mkdir()
    (stray / "todo.txt").write_text("buy milk")
    args = {"predict": ["some text"], "evaluate": [f"data.path={text_corpus}"]}[command]
    result = run_cli(str(stray), *args, cwd=tmp_path, module=f"sft.{command}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert f"{stray} is neither a run directory (with model/ and config.yaml)" in line
    assert "nor a model directory (with config.json)" in line


def test_push_without_a_token_says_how_to_set_one(tmp_path, hub, trained_text_run, monkeypatch):
    use_hub_env(monkeypatch, hub, tmp_path)  # no HF_TOKEN, no saved token
    result = push_here(trained_text_run[0], "--repo-id", "me/x", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "no hub token is set" in line and "HF_TOKEN" in line and "hf auth login" in line
    assert hub.requests == []  # nothing was sent


def test_push_to_hub_without_a_token_fails_before_training(
    tmp_path, hub, tiny_checkpoint, monkeypatch
):
    use_hub_env(monkeypatch, hub, tmp_path)
    result = run_cli(
        f"model.checkpoint={tiny_checkpoint}", f"output_dir={tmp_path / 'run'}",
        "push_to_hub=true", "hub.repo_id=me/x", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = error_line(result.stderr)
    assert "push_to_hub=true but no hub token is set" in line and "HF_TOKEN" in line
    assert not (tmp_path / "run" / "history.jsonl").exists()  # nothing trained
