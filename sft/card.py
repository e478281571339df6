"""The model card (README.md) of a finished run, built from its run directory alone: Hub
metadata (pipeline tag, base model, metrics with a model-index), results, per-class report,
curves and confusion matrix, hyper-parameters, and how to load the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from sft import modalities
from sft.errors import SftError
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
    "loss.label_smoothing",
    "loss.class_weights",
    "augment",
    "seed",
)


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
    if metrics.get("problem", "single_label") != "single_label":
        raise SftError(
            f"{run.root} is a {metrics['problem']} run: model cards and pushes handle "
            f"single_label runs so far; its model is in {run.model}"
        )
    task = config.task
    base, data = shown(config.model.checkpoint), shown(config.data.path)
    split = metrics["split"]
    lora_adapter = config.finetune.strategy == "lora" and not config.finetune.merge
    dataset_name = f"{data}/{config.data.name}" if config.data.name else data
    metadata: dict[str, Any] = {
        "library_name": "transformers",
        "pipeline_tag": task,
        "tags": ["sft", task],
        "metrics": ["accuracy", "f1"],
    }
    if is_hub_id(config.model.checkpoint):
        metadata["base_model"] = base
    if is_hub_id(config.data.path):
        metadata["datasets"] = [data]
    metadata["model-index"] = [
        {
            "name": repo_id.split("/")[-1],
            "results": [
                {
                    "task": {"type": task, "name": task.replace("-", " ").capitalize()},
                    "dataset": {
                        "name": dataset_name,
                        "type": data,
                        "split": split,
                    },
                    "metrics": [
                        {
                            "type": "accuracy",
                            "value": round(metrics["accuracy"], 4),
                            "name": "Accuracy",
                        },
                        {
                            "type": "f1",
                            "value": round(metrics["f1"], 4),
                            "name": "Macro F1",
                            "args": {"average": "macro"},
                        },
                    ],
                }
            ],
        }
    ]
    front = yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True)
    sections = [
        f"---\n{front}---\n",
        f"# {repo_id.split('/')[-1]}\n",
        f"A {task.replace('-', ' ')} model fine-tuned from `{base}` on `{dataset_name}` with "
        f"[sft](https://pypi.org/project/sft-classify/) (`finetune={config.finetune.strategy}`), "
        f"{len(metrics['labels'])} labels: {', '.join(metrics['labels'])}.\n",
        _results(metrics),
        _per_class(metrics),
        _plots(run),
        _hyperparameters(config, metrics),
        _usage(repo_id, task, adapter=lora_adapter),
    ]
    return "\n".join(s for s in sections if s)


def _results(metrics: dict) -> str:
    validation = metrics.get("validation", {})
    rows = [
        f"| {metrics['split']} | {metrics['num_examples']} | {metrics['accuracy']:.4f} | "
        f"{metrics['f1']:.4f} | {metrics['loss']:.4f} |"
    ]
    if metrics["split"] != "validation" and validation:
        rows.append(
            f"| validation (best checkpoint) | | {validation['accuracy']:.4f} | "
            f"{validation['f1']:.4f} | {validation['loss']:.4f} |"
        )
    return "\n".join(
        [
            "## Results\n",
            "| split | examples | accuracy | macro-F1 | loss |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def _per_class(metrics: dict) -> str:
    rows = [
        f"| {name} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
        for name, c in metrics["per_class"].items()
    ]
    return "\n".join(
        [
            f"### Per class ({metrics['split']} split)\n",
            "| label | precision | recall | F1 | support |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    )


def _plots(run: RunDir) -> str:
    images = [
        (name, title)
        for name, title in (
            ("loss.png", "Training and validation loss"),
            ("accuracy.png", "Validation accuracy and macro-F1"),
            ("confusion_matrix.png", "Confusion matrix"),
        )
        if (run.plots / name).is_file()
    ]
    if not images:
        return ""
    return "## Training curves\n\n" + "\n".join(f"![{t}](plots/{n})" for n, t in images) + "\n"


def _hyperparameters(config, metrics: dict) -> str:
    rows = []
    strategy = config.finetune.strategy
    skip = {"finetune.k"} if strategy != "top_k" else set()
    skip |= {"finetune.r"} if strategy != "lora" else set()
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
    return "\n".join(["## Training hyper-parameters\n", "| key | value |", "|---|---|", *rows, ""])


def _usage(repo_id: str, task: str, adapter: bool = False) -> str:
    # Given a repo id holding a LoRA adapter, transformers loads the adapter's
    # base_model_name_or_path, without our labels; a downloaded copy loads as it is.
    source = f'snapshot_download("{repo_id}")' if adapter else f'"{repo_id}"'
    imports = "from huggingface_hub import snapshot_download\n" if adapter else ""
    return (
        "## How to use\n\n"
        "```python\n"
        f"{imports}from transformers import pipeline\n\n"
        f'classify = pipeline("{task}", model={source})\n'
        f"classify({modalities.get(task).usage_example})\n"
        "```\n\n"
        "The run's resolved config is `config.yaml` and its metrics `metrics.json`, beside the "
        "model.\n"
    )
