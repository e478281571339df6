"""Hydra multirun: one sweep directory named after the command, a job per sub-directory (each
job's run directory and config its own), a leaderboard ranked by the validation metric, and a
second invocation of the same command that skips finished jobs and reruns unfinished ones; an
Optuna search; and the accelerate launcher, whose jobs run as process groups.

The four-job sweep runs once, in this process (Hydra's basic launcher runs its jobs in the
process that called it); the tests that change it work on a copy."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import yaml

from tests.conftest import run_cli, write_text_corpus

pytestmark = pytest.mark.slow


def sweep_args(checkpoint, corpus) -> list[str]:
    return [
        "-m",
        "recipe=bert_news",
        f"model.checkpoint={checkpoint}",
        f"data.path={corpus}",
        "data.max_length=32",
        "trainer.epochs=2",
        "trainer.progress=false",
        "optimizer.lr=1e-4,5e-3",
        "finetune=full,head_only",
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_checkpoint):
    """(working directory, command line, sweep directory) of the finished four-job sweep."""
    base = tmp_path_factory.mktemp("sweep")
    args = sweep_args(tiny_checkpoint, write_text_corpus(base / "corpus"))
    first = run_cli(*args, cwd=base)
    assert first.returncode == 0, first.stderr[-3000:]
    (sweep_dir,) = (base / "multirun").iterdir()
    return base, args, sweep_dir


def read_summary(sweep_dir):
    with (sweep_dir / "sweep_summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_multirun_ranks_jobs_and_a_rerun_skips_finished_ones(tmp_path, sweep):
    base, args, sweep_dir = sweep
    assert sweep_dir.name.startswith("bert_news-")
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0", "1", "2", "3"]

    rows = read_summary(sweep_dir)
    assert len(rows) == 4
    assert {(float(r["optimizer.lr"]), r["finetune"]) for r in rows} == {
        (1e-4, "full"), (1e-4, "head_only"), (5e-3, "full"), (5e-3, "head_only"),
    }  # fmt: skip
    scores = [float(r["validation_f1"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4"]
    for row in rows:
        job = sweep_dir / row["job"]
        metrics = json.loads((job / "metrics.json").read_text())
        assert float(row["validation_f1"]) == pytest.approx(metrics["validation"]["f1"])
        assert float(row["test_accuracy"]) == pytest.approx(metrics["accuracy"])
        assert row["status"] == "finished"
        # Each job is a run of its own: its directory, and its own settings in its config.
        saved = yaml.safe_load((job / "config.yaml").read_text())
        assert saved["output_dir"] == str(job)
        assert saved["optimizer"]["lr"] == float(row["optimizer.lr"])
        assert saved["finetune"]["strategy"] == row["finetune"]
    assert (sweep_dir / "sweep_summary.png").stat().st_size > 1000

    # Job 2 did not finish: the same command again reruns it and leaves the others alone. (On a
    # copy: the sweep directory's name comes from the command line, the same in any directory.)
    shutil.copytree(base / "multirun", tmp_path / "multirun")
    sweep_dir = tmp_path / "multirun" / sweep_dir.name
    finished = {job: (sweep_dir / job / "metrics.json").stat().st_mtime_ns for job in jobs}
    before = json.loads((sweep_dir / "2" / "metrics.json").read_text())
    (sweep_dir / "2" / "metrics.json").unlink()
    shutil.rmtree(sweep_dir / "2" / "model")
    second = run_cli(*args, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("holds a finished run") == 3
    assert [p.name for p in (tmp_path / "multirun").iterdir()] == [sweep_dir.name]
    for job in ("0", "1", "3"):
        assert (sweep_dir / job / "metrics.json").stat().st_mtime_ns == finished[job]
    after = json.loads((sweep_dir / "2" / "metrics.json").read_text())
    assert after["accuracy"] == before["accuracy"] and after["f1"] == before["f1"]
    assert len(read_summary(sweep_dir)) == 4


def test_leaderboard_lists_unfinished_jobs_last_without_rank(tmp_path, sweep):
    from sft.runs.sweep import write_leaderboard

    sweep_dir = shutil.copytree(sweep[2], tmp_path / "sweep")  # the sweep's finished jobs
    (sweep_dir / "0" / "metrics.json").unlink()
    write_leaderboard(sweep_dir, "loss")
    rows = read_summary(sweep_dir)

    def validation_loss(job: str) -> float:
        return json.loads((sweep_dir / job / "metrics.json").read_text())["validation"]["loss"]

    by_loss = sorted(("1", "2", "3"), key=validation_loss)  # the lowest loss first
    assert [(r["job"], r["rank"], r["status"]) for r in rows] == [
        (by_loss[0], "1", "finished"),
        (by_loss[1], "2", "finished"),
        (by_loss[2], "3", "finished"),
        ("0", "", "incomplete"),
    ]
    assert [float(r["validation_loss"]) for r in rows[:3]] == [validation_loss(j) for j in by_loss]
    assert float(rows[0]["optimizer.lr"]) == 5e-3  # the higher rate learns more in 2 epochs


def test_a_regression_leaderboard_ranks_by_lower_mse_and_shows_its_test_scores(tmp_path):
    from sft.problems import PROBLEMS
    from sft.runs.sweep import write_leaderboard

    sweep_dir = tmp_path / "multirun"
    for job, (lr, mse) in enumerate([("1e-3", 0.9), ("1e-4", 0.2), ("1e-5", float("nan"))]):
        (sweep_dir / str(job) / ".hydra").mkdir(parents=True)
        (sweep_dir / str(job) / ".hydra" / "overrides.yaml").write_text(f"- optimizer.lr={lr}\n")
        metrics = {"problem": "regression", "split": "test", "validation": {"mse": mse},
                   "mse": mse + 0.1, "r2": 0.5, "loss": 1.0, "train_seconds": 3}  # fmt: skip
        (sweep_dir / str(job) / "metrics.json").write_text(json.dumps(metrics))
    write_leaderboard(sweep_dir, "mse", PROBLEMS["regression"].metrics)
    rows = read_summary(sweep_dir)
    assert [(r["rank"], r["optimizer.lr"]) for r in rows] == [
        ("1", "1e-4"),  # the smallest MSE first; an undefined one last
        ("2", "1e-3"),
        ("3", "1e-5"),
    ]
    assert float(rows[0]["test_mse"]) == pytest.approx(0.3) and rows[0]["test_r2"] == "0.5"
    assert "test_accuracy" not in rows[0] and (sweep_dir / "sweep_summary.png").exists()


def test_optuna_search_config_runs_trials_and_ranks_them(tmp_path, tiny_checkpoint, text_corpus):
    base = sweep_args(tiny_checkpoint, text_corpus)[:-2]  # Optuna chooses lr and finetune
    result = run_cli(*base, "+sweep=optuna", "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    rows = read_summary(sweep_dir)
    assert len(rows) == 2 and all(r["status"] == "finished" for r in rows)
    assert {"optimizer.lr", "optimizer.layer_decay", "finetune"} <= set(rows[0])
    assert (sweep_dir / "optimization_results.yaml").exists()  # Optuna's own report


def test_accelerate_launcher_runs_each_job_as_a_process_group(
    tmp_path, tiny_checkpoint, text_corpus, monkeypatch, capfd
):
    # The sweep's own process is not the subject: it runs here. Its launcher starts each job
    # as `accelerate launch` of two ranks, which inherit this environment (gloo on CPU, one
    # thread each as they run at once) and write to this process's file descriptors.
    monkeypatch.setenv("ACCELERATE_USE_CPU", "true")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    args = [
        *sweep_args(tiny_checkpoint, text_corpus)[:-2],
        "optimizer.lr=1e-4,5e-3",
        "trainer.max_steps=2",  # the subject is where each job runs, not what it learns
        "hydra/launcher=accelerate",
        "hydra.launcher.num_processes=2",
    ]
    result = run_cli(*args, cwd=tmp_path)
    children = capfd.readouterr()
    assert result.returncode == 0, result.stderr[-3000:] + children.err[-3000:]
    assert (children.out + children.err).count("x 2 processes") == 2  # one per job
    (sweep_dir,) = (tmp_path / "multirun").iterdir()
    rows = read_summary(sweep_dir)
    assert sorted(float(r["optimizer.lr"]) for r in rows) == [1e-4, 5e-3]
    for row in rows:
        metrics = json.loads((sweep_dir / row["job"] / "metrics.json").read_text())
        assert metrics["num_examples"] == 15  # each test example counted once over 2 ranks
