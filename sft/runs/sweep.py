"""Sweeps: the leaderboard Hydra writes when a multirun ends, and the sweep directory's name.

`python -m sft.train -m recipe=bert_news optimizer.lr=1e-5,3e-5 finetune=full,top_k` runs each
job in <sweep>/<job number>/; at the end <sweep>/sweep_summary.csv and sweep_summary.png rank
the jobs by the validation metric (`trainer.metric`): choosing among jobs by their test score
would leak the test set into the choice. Test scores are listed beside it.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sft.runs.directory import RunDir

log = logging.getLogger(__name__)

SUMMARY = "sweep_summary"


class Leaderboard(Callback):
    """Hydra callback (conf/config.yaml): writes the leaderboard when a multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from sft import problems  # torch: only once the sweep is over

        problem = problems.get(OmegaConf.select(config, "problem", default=None))
        metric = problem.metric(OmegaConf.select(config, "trainer.metric", default="auto"))
        path = write_leaderboard(Path(config.hydra.sweep.dir), metric, problem.metrics)
        log.info("sweep leaderboard: %s", path)


def write_leaderboard(
    sweep_dir: Path, metric: str, scores: tuple[str, ...] = ("accuracy", "f1")
) -> Path:
    """<sweep_dir>/sweep_summary.csv (best first) and .png from every job's run directory;
    `scores`: the test scores shown beside the validation `metric` (the problem's metrics)."""
    from sft.problems import metrics  # scikit-learn: only once the sweep is over

    tested = [*scores, "loss"]
    rows = [_job_row(job, metric, tested) for job in _jobs(sweep_dir)]
    varying = _varying_keys(rows)
    finished = sorted(
        (r for r in rows if r["status"] == "finished"),
        key=lambda r: metrics.better(metric, r[f"validation_{metric}"]),
        reverse=True,
    )
    ranked = finished + [r for r in rows if r["status"] != "finished"]
    columns = [
        "rank",
        "job",
        *varying,
        f"validation_{metric}",
        *(f"test_{k}" for k in tested),
        "train_seconds",
        "status",
        "run_dir",
    ]
    csv_path = sweep_dir / f"{SUMMARY}.csv"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for rank, row in enumerate(ranked, start=1):
            writer.writerow({**row, "rank": rank if row["status"] == "finished" else ""})
    _plot(finished, varying, metric, sweep_dir / f"{SUMMARY}.png")
    return csv_path


def _jobs(sweep_dir: Path) -> list[Path]:
    jobs = [d for d in sweep_dir.iterdir() if d.is_dir() and (d / ".hydra").is_dir()]
    return sorted(jobs, key=lambda d: (len(d.name), d.name))  # 2 before 10


def _job_row(job: Path, metric: str, tested: list[str]) -> dict[str, Any]:
    overrides = OmegaConf.load(job / ".hydra" / "overrides.yaml")
    row: dict[str, Any] = {"job": job.name, "run_dir": str(job), "overrides": {}}
    for override in overrides:
        key, _, value = str(override).partition("=")
        row["overrides"][key] = value
        row[key] = value
    run = RunDir(job)
    if not run.finished():
        row["status"] = "incomplete"
        return row
    metrics = run.read_metrics()
    validation = metrics.get("validation", {})
    split = metrics.get("split", "test")
    row |= {
        "status": "finished",
        f"validation_{metric}": validation.get(metric, float("nan")),
        "train_seconds": metrics.get("train_seconds"),
    }
    if split == "test":
        row |= {f"test_{k}": metrics.get(k) for k in tested}
    return row


def _varying_keys(rows: list[dict]) -> list[str]:
    """Override keys whose values differ between jobs (all of them if none differ)."""
    keys = list(dict.fromkeys(k for r in rows for k in r["overrides"]))
    varying = [k for k in keys if len({r["overrides"].get(k) for r in rows}) > 1]
    return varying or keys


def _plot(rows: list[dict], varying: list[str], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [" ".join(f"{k}={r.get(k, '')}" for k in varying) or r["job"] for r in rows]
    values = [r[f"validation_{metric}"] for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * max(len(rows), 2) + 1.2))
    ax.barh(range(len(rows)), values, color="tab:blue")
    ax.set_yticks(range(len(rows)), labels)
    ax.invert_yaxis()  # the best on top
    for i, value in enumerate(values):
        ax.text(value, i, f" {value:.4f}", va="center")
    ax.set_xlabel(f"validation {metric}")
    ax.set_title(f"sweep: {len(rows)} finished jobs, best first")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
