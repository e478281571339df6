"""Hydra multirun: one sweep directory named after the command, a job per sub-directory, a
leaderboard ranked by the validation metric, and a second invocation of the same command that
skips finished jobs and reruns unfinished ones."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def sweep_args(tiny_checkpoint, text_corpus):
    return [
        "-m",
        "recipe=bert_news",
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        "data.max_length=32",
        "trainer.epochs=2",
        "trainer.progress=false",
        "optimizer.lr=1e-4,5e-3",
        "finetune=full,head_only",
    ]


def read_summary(sweep):
    with (sweep / "sweep_summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_multirun_ranks_jobs_and_a_rerun_skips_finished_ones(tmp_path, sweep_args):
    first = run_cli(*sweep_args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    assert sweep.name.startswith("bert_news-")
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]

    rows = read_summary(sweep)
    assert len(rows) == 4
    assert {(float(r["optimizer.lr"]), r["finetune"]) for r in rows} == {
        (1e-4, "full"), (1e-4, "head_only"), (5e-3, "full"), (5e-3, "head_only"),
    }  # fmt: skip
    scores = [float(r["validation_f1"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    for row in rows:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert float(row["validation_f1"]) == pytest.approx(metrics["validation"]["f1"])
        assert float(row["test_accuracy"]) == pytest.approx(metrics["accuracy"])
        assert row["status"] == "finished"
    assert (sweep / "sweep_summary.png").stat().st_size > 1000

    # Job 2 did not finish: the same command again reruns it and leaves the others alone.
    finished = {job: (sweep / job / "metrics.json").stat().st_mtime_ns for job in jobs}
    before = json.loads((sweep / "2" / "metrics.json").read_text())
    (sweep / "2" / "metrics.json").unlink()
    shutil.rmtree(sweep / "2" / "model")
    second = run_cli(*sweep_args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("holds a finished run") == 3
    assert [p.name for p in (tmp_path / "multirun").iterdir()] == [sweep.name]
    for job in ("0", "1", "3"):
        assert (sweep / job / "metrics.json").stat().st_mtime_ns == finished[job]
    after = json.loads((sweep / "2" / "metrics.json").read_text())
    assert after["accuracy"] == before["accuracy"] and after["f1"] == before["f1"]
    assert len(read_summary(sweep)) == 4


def test_leaderboard_lists_unfinished_jobs_last_without_rank(tmp_path, sweep_args):
    from sft.sweep import write_leaderboard

    result = run_cli(*sweep_args[:-1], "finetune=full", cwd=tmp_path)  # two jobs
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    (sweep / "0" / "metrics.json").unlink()
    write_leaderboard(sweep, "loss")
    rows = read_summary(sweep)
    assert [(r["job"], r["rank"], r["status"]) for r in rows] == [
        ("1", "1", "finished"),
        ("0", "", "incomplete"),
    ]
    assert float(rows[0]["optimizer.lr"]) == 5e-3


def test_a_regression_leaderboard_ranks_by_lower_mse_and_shows_its_test_scores(tmp_path):
    from sft.problems import PROBLEMS
    from sft.sweep import write_leaderboard

    sweep = tmp_path / "multirun"
    for job, (lr, mse) in enumerate([("1e-3", 0.9), ("1e-4", 0.2), ("1e-5", float("nan"))]):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
        metrics = {"problem": "regression", "split": "test", "validation": {"mse": mse},
                   "mse": mse + 0.1, "r2": 0.5, "loss": 1.0, "train_seconds": 3}  # fmt: skip
        (sweep / str(job) / "metrics.json").write_text(json.dumps(metrics))
    write_leaderboard(sweep, "mse", PROBLEMS["regression"].metrics)
    rows = read_summary(sweep)
    assert [(r["rank"], r["optimizer.lr"]) for r in rows] == [
        ("1", "1e-4"),  # the smallest MSE first; an undefined one last
        ("2", "1e-3"),
        ("3", "1e-5"),
    ]
    assert float(rows[0]["test_mse"]) == pytest.approx(0.3) and rows[0]["test_r2"] == "0.5"
    assert "test_accuracy" not in rows[0] and (sweep / "sweep_summary.png").exists()


def test_optuna_search_config_runs_trials_and_ranks_them(tmp_path, sweep_args):
    base = [a for a in sweep_args if not a.startswith(("optimizer.lr=", "finetune="))]
    result = run_cli(*base, "+sweep=optuna", "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "multirun").iterdir()
    rows = read_summary(sweep)
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)
    assert {"optimizer.lr", "optimizer.layer_decay", "finetune"} <= set(rows[0])
    assert (sweep / "optimization_results.yaml").exists()  # Optuna's own report


def test_accelerate_launcher_runs_each_job_as_a_process_group(tmp_path, sweep_args):
    args = [*sweep_args[:-1], "hydra/launcher=accelerate", "hydra.launcher.num_processes=2"]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sft.train", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (result.stdout + result.stderr).count("x 2 processes") == 2  # one per job
    (sweep,) = (tmp_path / "multirun").iterdir()
    rows = read_summary(sweep)
    assert sorted(float(r["optimizer.lr"]) for r in rows) == [1e-4, 5e-3]
    for row in rows:
        metrics = json.loads((sweep / row["job"] / "metrics.json").read_text())
        assert metrics["num_examples"] == 15  # each test example counted once over 2 ranks
