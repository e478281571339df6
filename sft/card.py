"""The model card (README.md) of a finished run, built from its run directory alone: Hub
metadata (pipeline tag, base model, metrics with a model-index), results, per-label report,
plots, hyper-parameters, and how to load the model — for each problem (single-label,
multi-label, regression) with its own metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from sft import modalities, problems
from sft.run_dir import RunDir

HYPERPARAMETERS = (
    "model.checkpoint",
    "data.path",
    "data.name",
    "data.max_length",
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
# Keys shown only for the problem that reads them.
ONLY_FOR = {
    "loss.label_smoothing": "single_label",
    "loss.class_weights": "single_label",
    "loss.pos_weight": "multi_label",
    "loss.regression": "regression",
    "data.standardize_targets": "regression",
}

# What the card reports per problem: (metrics.json key, Hub metric type, name, args).
METRICS = {
    "single_label": [
        ("accuracy", "accuracy", "Accuracy", None),
        ("f1", "f1", "Macro F1", {"average": "macro"}),
    ],
    "multi_label": [
        ("f1", "f1", "Macro F1", {"average": "macro"}),
        ("f1_micro", "f1", "Micro F1", {"average": "micro"}),
        ("accuracy", "accuracy", "Subset accuracy", None),
    ],
    "regression": [
        ("mse", "mse", "MSE", None),
        ("mae", "mae", "MAE", None),
        ("r2", "r_squared", "R²", None),
        ("pearson", "pearsonr", "Pearson", None),
        ("spearman", "spearmanr", "Spearman", None),
    ],
}
PLOTS = (
    ("loss.png", "Training and validation loss"),
    ("accuracy.png", "Validation scores"),
    ("scores.png", "Validation scores"),
    ("confusion_matrix.png", "Confusion matrix"),
    ("per_label.png", "Precision, recall and F1 per label"),
    ("predicted.png", "Predicted against true values"),
)


# How to call the pipeline, and what its scores are, per problem.
USAGE_NOTE = {
    "single_label": ("", ""),
    "multi_label": (
        ", top_k=None",
        "Every label gets its sigmoid score; the labels above the threshold "
        "(`multi_label_threshold` in config.json) are the prediction.\n\n",
    ),
    "regression": (
        ", top_k=None",
        "Each score is a predicted value (config.json's `problem_type` is regression, so the "
        "pipeline applies no function to the outputs).\n\n",
    ),
}


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
    problem = metrics.get("problem", "single_label")
    task = config.task
    base, data = shown(config.model.checkpoint), shown(config.data.path)
    lora_adapter = config.finetune.strategy == "lora" and not config.finetune.merge
    dataset_name = f"{data}/{config.data.name}" if config.data.name else data
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": task,
        "tags": ["sft", task] + ([problem.replace("_", "-")] if problem != "single_label" else []),
        "metrics": sorted({hub_type for _, hub_type, _, _ in METRICS[problem]}),
    }
    if is_hub_id(config.model.checkpoint):
        metadata["base_model"] = base
    if is_hub_id(config.data.path):
        metadata["datasets"] = [data]
    scores = [
        {"type": hub_type, "value": round(metrics[key], 4), "name": name}
        | ({"args": args} if args else {})
        for key, hub_type, name, args in METRICS[problem]
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
    sections = [
        f"---\n{front}---\n",
        f"# {repo_id.split('/')[-1]}\n",
        f"A {_kind(task, problem)} model fine-tuned from `{base}` on `{dataset_name}` with "
        f"[sft](https://pypi.org/project/sft-classify/) (`finetune={config.finetune.strategy}`). "
        f"{problems.get(problem).describes(metrics)}\n",
        _results(problem, metrics),
        _per_label(problem, metrics),
        _plots(run),
        _hyperparameters(config, metrics),
        _usage(repo_id, task, problem, adapter=lora_adapter),
    ]
    return "\n".join(s for s in sections if s)


def _kind(task: str, problem: str) -> str:
    """'text classification', 'multi-label image classification', 'audio regression'..."""
    kind = task.replace("-", " ")
    if problem == "regression":
        return kind.replace("classification", "regression")
    return f"multi-label {kind}" if problem == "multi_label" else kind


def _results(problem: str, metrics: dict) -> str:
    keys = [key for key, _, _, _ in METRICS[problem]] + ["loss"]
    loss = "loss (standardised targets)" if "standardized_targets" in metrics else "loss"
    names = [name for _, _, name, _ in METRICS[problem]] + [loss]

    def row(split: str, examples: Any, scores: dict) -> list[str]:
        return [split, str(examples)] + [f"{scores[k]:.4f}" if k in scores else "" for k in keys]

    rows = [row(metrics["split"], metrics["num_examples"], metrics)]
    validation = metrics.get("validation", {})
    if metrics["split"] != "validation" and validation:
        rows.append(row("validation (best checkpoint)", "", validation))
    return "## Results\n\n" + _table(["split", "examples", *names], rows)


def _per_label(problem: str, metrics: dict) -> str:
    title = f"### Per label ({metrics['split']} split)\n\n"
    if problem == "regression":
        if "per_target" not in metrics:
            return ""
        keys = ("mse", "mae", "r2", "pearson")
        rows = [[n, *(f"{t[k]:.4f}" for k in keys)] for n, t in metrics["per_target"].items()]
        return title + _table(["target", "MSE", "MAE", "R²", "Pearson"], rows)
    rows = [
        [n, *(f"{c[k]:.4f}" for k in ("precision", "recall", "f1")), str(c["support"])]
        for n, c in metrics["per_class"].items()
    ]
    return title + _table(["label", "precision", "recall", "F1", "support"], rows)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = [header, ["---"] * len(header), *rows]
    return "".join(f"| {' | '.join(cells)} |\n" for cells in lines)


def _plots(run: RunDir) -> str:
    images = [(name, title) for name, title in PLOTS if (run.plots / name).is_file()]
    if not images:
        return ""
    return "## Plots\n\n" + "\n".join(f"![{t}](plots/{n})" for n, t in images) + "\n"


def _hyperparameters(config, metrics: dict) -> str:
    rows = []
    strategy = config.finetune.strategy
    skip = {"finetune.k"} if strategy != "top_k" else set()
    skip |= {"finetune.r"} if strategy != "lora" else set()
    problem = metrics.get("problem", "single_label")
    skip |= {key for key, only in ONLY_FOR.items() if only != problem}
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


def _usage(repo_id: str, task: str, problem: str, adapter: bool = False) -> str:
    # Given a repo id holding a LoRA adapter, transformers loads the adapter's
    # base_model_name_or_path, without our labels; a downloaded copy loads as it is.
    source = f'snapshot_download("{repo_id}")' if adapter else f'"{repo_id}"'
    imports = "from huggingface_hub import snapshot_download\n" if adapter else ""
    return (
        "## How to use\n\n"
        "```python\n"
        f"{imports}from transformers import pipeline\n\n"
        f'classify = pipeline("{task}", model={source})\n'
        f"classify({modalities.get(task).usage_example}{USAGE_NOTE[problem][0]})\n"
        "```\n\n"
        f"{USAGE_NOTE[problem][1]}"
        "The run's resolved config is `config.yaml` and its metrics `metrics.json`, beside the "
        "model.\n"
    )
