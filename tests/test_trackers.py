"""Trackers through Accelerate: TensorBoard (the default) receives the loss curve, the eval
metrics and the resolved config; an uninstalled tracker is a clear error; logger=none writes
nothing."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import FAST, run_tiny_text

pytestmark = pytest.mark.slow


def test_tensorboard_holds_the_history_and_the_config(trained_text_run, tiny_checkpoint):
    # The shared finished run (conftest's FAST settings, the default logger) is read only.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = trained_text_run[0]
    history = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    train_loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    expected = [(r["step"], r["loss"]) for r in history if r["kind"] == "train"]
    assert [s for s, _ in train_loss] == [s for s, _ in expected]
    assert [v for _, v in train_loss] == pytest.approx([v for _, v in expected], rel=1e-6)
    for metric in ("accuracy", "f1", "loss"):
        logged = [(e.step, e.value) for e in events.Scalars(f"eval/{metric}")]
        wanted = [(r["step"], r[metric]) for r in history if r["kind"] == "eval"]
        assert [s for s, _ in logged] == [s for s, _ in wanted]
        assert [v for _, v in logged] == pytest.approx([v for _, v in wanted], rel=1e-6)
    (hparams_file,) = (run_dir / "tensorboard").rglob("hparams.yml")
    hparams = yaml.safe_load(hparams_file.read_text())
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert hparams["optimizer/lr"] == config["optimizer"]["lr"]
    assert "trainer.epochs=10" in FAST and hparams["trainer/epochs"] == 10  # the override
    assert hparams["model/checkpoint"] == str(tiny_checkpoint)


def test_an_uninstalled_tracker_is_a_clear_error(tmp_path, tiny_checkpoint, text_corpus):
    from tests.conftest import run_cli

    result = run_cli(
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        f"output_dir={tmp_path / 'run'}",
        "logger=wandb",
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: logger=wandb needs the wandb package: pip install wandb; or use "
        "logger=tensorboard or logger=none"
    )


def test_logger_none_writes_no_tracker_files(tmp_path, tiny_checkpoint, text_corpus):
    _, run_dir = run_tiny_text(
        tmp_path, tiny_checkpoint, text_corpus, "trainer.epochs=1", "logger=none"
    )
    assert not (run_dir / "tensorboard").exists()
    assert (run_dir / "metrics.json").exists()
