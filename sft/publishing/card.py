"""The model card (README.md) of a finished run, built from its run directory alone: Hub
metadata (pipeline tag, base model, metrics with a model-index), results, per-label report,
plots, hyper-parameters, and how to load the model — each problem type (sft/problems/) with
its own metrics, rows and usage note."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from sft import modalities, problems
from sft.runs.directory import RunDir

HYPERPARAMETERS = (
    "model.checkpoint",
    "data.path",
    "data.name",
    "data.max_length",
    "data.long_text",
    "data.stride",
    "data.max_chunks",
    "data.pool",
    "data.max_duration",
    "finetune.strategy",
    "finetune.k",
    "finetune.r",
    "optimizer.lr",
    "optimizer.head_lr",
    "optimizer.layer_decay",
    "optimizer.weight_decay",
    "scheduler.name",
    "scheduler.warmup_ratio",
    "trainer.epochs",
    "trainer.max_steps",
    "trainer.batch_size",
    "trainer.grad_accum_steps",
    "trainer.precision",
    "problem",
    "loss.label_smoothing",
    "loss.class_weights",
    "loss.pos_weight",
    "loss.regression",
    "data.standardize_targets",
    "augment",
    "seed",
)
PLOTS = (
    ("loss.png", "Training and validation loss"),
    ("accuracy.png", "Validation scores"),
    ("scores.png", "Validation scores"),
    ("confusion_matrix.png", "Confusion matrix"),
    ("per_label.png", "Precision, recall and F1 per label"),
    ("predicted.png", "Predicted against true values"),
    ("reliability.png", "Reliability before and after calibration"),
)


CALIBRATION = ("ece", "nll", "brier")  # as sft/problems/calibration.py measures them


def is_hub_id(value: str | None) -> bool:
    """Looks like `name` or `owner/name` on a hub, not a path on this machine."""
    if not value or Path(value).exists() or value.startswith((".", "/", "~")):
        return False
    return value.count("/") <= 1 and " " not in value


def shown(value: str) -> str:
    """A hub id as it is; a local path by its last two parts (no one else's machine has it)."""
    return value if is_hub_id(value) else "/".join(Path(value).parts[-2:])


def model_card(run: RunDir, repo_id: str) -> str:
    """README.md for `repo_id` from the finished run in `run`."""
    config, metrics = run.read_finished()
    problem = problems.get(metrics.get("problem"))
    task = config.task
    base, data = shown(config.model.checkpoint), shown(config.data.path)
    lora_adapter = config.finetune.strategy == "lora" and not config.finetune.merge
    dataset_name = f"{data}/{config.data.name}" if config.data.name else data
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": task,
        "tags": ["sft", task] + ([problem.tag] if problem.tag else []),
        "metrics": sorted({m.hub_type for m in problem.card_metrics}),
    }
    if is_hub_id(config.model.checkpoint):
        metadata["base_model"] = base
    if is_hub_id(config.data.path):
        metadata["datasets"] = [data]
    scores = [
        {"type": hub_type, "value": round(metrics[key], 4), "name": name}
        | ({"args": args} if args else {})
        for key, hub_type, name, args in problem.card_metrics
        if metrics[key] == metrics[key]  # an undefined score (NaN) is left out
    ]
    task_name = task.replace("-", " ").capitalize()
    metadata["model-index"] = [
        {
            "name": repo_id.split("/")[-1],
            "results": [
                {
                    "task": {"type": task, "name": task_name},
                    "dataset": {"name": dataset_name, "type": data, "split": metrics["split"]},
                    "metrics": scores,
                }
            ],
        }
    ]
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    kind = problem.kind(task.replace("-", " "))
    sections = [
        f"---\n{front}---\n",
        f"# {repo_id.split('/')[-1]}\n",
        f"A {kind} model fine-tuned from `{base}` on `{dataset_name}` with "
        f"[sft](https://pypi.org/project/sft-classify/) (`finetune={config.finetune.strategy}`). "
        f"{problem.describes(metrics)}\n",
        _long_text(config),
        _results(problem, metrics),
        _calibration(metrics),
        _per_label(problem, metrics),
        _plots(run),
        _hyperparameters(config, metrics, problem),
        _usage(repo_id, task, problem, adapter=lora_adapter),
    ]
    return "\n".join(s for s in sections if s)


def _long_text(config) -> str:
    """What a user must know of a model trained on windows of long texts."""
    d = config.data
    if d.get("long_text", "truncate") != "chunks":
        return ""
    return (
        f"Texts longer than {d.max_length} tokens were cut into overlapping windows (at most "
        f"{d.max_chunks} a text) and the windows' logits {d.pool}-pooled into one prediction "
        f"per text, in training and in every score below; the model's config records it "
        f"(`long_text`). `python -m sft.predict` cuts and pools the same way; `pipeline()` "
        f"truncates each text to its first window.\n"
    )


def _results(problem: problems.Problem, metrics: dict) -> str:
    keys = [m.key for m in problem.card_metrics] + ["loss"]
    loss = "loss (standardised targets)" if "standardized_targets" in metrics else "loss"
    names = [m.name for m in problem.card_metrics] + [loss]

    def row(split: str, examples: Any, scores: dict) -> list[str]:
        return [split, str(examples)] + [f"{scores[k]:.4f}" if k in scores else "" for k in keys]

    rows = [row(metrics["split"], metrics["num_examples"], metrics)]
    validation = metrics.get("validation", {})
    if metrics["split"] != "validation" and validation:
        rows.append(row("validation (best checkpoint)", "", validation))
    return "## Results\n\n" + _table(["split", "examples", *names], rows)


def _calibration(metrics: dict) -> str:
    if "calibration" not in metrics:
        return ""
    rows = [
        [split, *(f"{scores['before'][k]:.4f} → {scores['after'][k]:.4f}" for k in CALIBRATION)]
        for split, scores in metrics["calibration"].items()
    ]
    temperature = metrics["calibration_temperature"]
    return (
        f"### Calibration\n\nThe scores are calibrated: a temperature of {temperature:.4g}, "
        f"fitted on the validation split, is folded into the output layer (predictions are "
        f"unchanged).\n\n" + _table(["split", "ECE", "NLL", "Brier"], rows)
    )


def _per_label(problem: problems.Problem, metrics: dict) -> str:
    header, rows = problem.per_label_table(metrics)
    if not rows:
        return ""
    return f"### Per label ({metrics['split']} split)\n\n" + _table(header, rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "".join(f"| {' | '.join(cells)} |\n" for cells in lines)


def _plots(run: RunDir) -> str:
    images = [(name, title) for name, title in PLOTS if (run.plots / name).is_file()]
    if not images:
        return ""
    return "## Plots\n\n" + "\n".join(f"![{t}](plots/{n})" for n, t in images) + "\n"


def _hyperparameters(config, metrics: dict, problem: problems.Problem) -> str:
    rows = []
    strategy = config.finetune.strategy
    skip = {"finetune.k"} if strategy != "top_k" else set()
    skip |= {"finetune.r"} if strategy != "lora" else set()
    if config.data.get("long_text", "truncate") == "truncate":
        skip |= {"data.stride", "data.max_chunks", "data.pool"}
    # Keys shown only for the problem that reads them
    skip |= {key for p in problems.PROBLEMS.values() for key in p.settings} - set(problem.settings)
    for key in HYPERPARAMETERS:
        value = OmegaConf.select(config, key, default=None)
        if value is None or key in skip:
            continue
        if key in ("model.checkpoint", "data.path"):
            value = shown(value)
        elif OmegaConf.is_config(value):
            value = value.get("name") or json.dumps(OmegaConf.to_container(value))
        rows.append(f"| `{key}` | `{value}` |")
    rows.append(f"| optimizer steps | {metrics['steps']} (best at {metrics['best_step']}) |")
    rows.append(f"| training time | {metrics['train_seconds']:.0f} s |")
    if "precision" in metrics:  # runs before sft recorded it have none
        rows.append(f"| precision | {metrics['precision']} ({metrics['precision_reason']}) |")
    return "\n".join(["## Training hyper-parameters\n", "| key | value |", "|---|---|", *rows, ""])


def _usage(repo_id: str, task: str, problem: problems.Problem, adapter: bool = False) -> str:
    # Given a repo id holding a LoRA adapter, transformers loads the adapter's
    # base_model_name_or_path, without our labels; a downloaded copy loads as it is.
    source = f'snapshot_download("{repo_id}")' if adapter else f'"{repo_id}"'
    imports = "from huggingface_hub import snapshot_download\n" if adapter else ""
    return (
        "## How to use\n\n"
        "```python\n"
        f"{imports}from transformers import pipeline\n\n"
        f'classify = pipeline("{task}", model={source})\n'
        f"classify({modalities.get(task).usage_example}{problem.pipeline_args})\n"
        "```\n\n"
        f"{problem.usage_note}"
        "The run's resolved config is `config.yaml` and its metrics `metrics.json`, beside the "
        "model.\n"
    )
