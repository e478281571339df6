"""The run directory: everything a run leaves behind, written so that nothing half-done looks done.

<run>/config.yaml     resolved config (written first)
<run>/history.jsonl   one JSON row per logged train step and per evaluation
<run>/model/          Hugging Face format: safetensors, config with id2label, tokenizer
<run>/metrics.json    final evaluation (written last: its presence means the run finished)
<run>/plots/          loss.png, accuracy.png, confusion_matrix.png
<run>/checkpoints/    the latest training checkpoints (sft/checkpoint.py)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.model = self.root / "model"
        self.metrics = self.root / "metrics.json"
        self.history = self.root / "history.jsonl"
        self.config = self.root / "config.yaml"
        self.plots = self.root / "plots"

    def write_config(self, config: Any) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(OmegaConf.to_yaml(config, resolve=True))

    def start_history(self) -> None:
        self.history.unlink(missing_ok=True)

    def record(self, row: dict) -> None:
        with self.history.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_history(self, rows: int) -> None:
        """Keep the first `rows` rows (a resumed run writes those after its checkpoint again)."""
        self.history.write_text("".join(f"{json.dumps(r)}\n" for r in self.read_history()[:rows]))

    def read_history(self) -> list[dict]:
        if not self.history.exists():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line]

    def save_model(self, save: Any) -> None:
        """`save(directory)` writes the model there; it lands as model/ only once complete."""
        staging = self.root / "model.partial"
        shutil.rmtree(staging, ignore_errors=True)
        save(staging)
        shutil.rmtree(self.model, ignore_errors=True)
        staging.rename(self.model)

    def write_json(self, name: str, data: dict) -> None:
        (self.root / name).write_text(json.dumps(data, indent=2) + "\n")

    def write_metrics(self, metrics: dict) -> None:
        staging = self.metrics.with_suffix(".partial")
        staging.write_text(json.dumps(metrics, indent=2) + "\n")
        staging.rename(self.metrics)

    def clear_results(self) -> None:
        """Remove results of an earlier run in this directory, so none can pass for this run's."""
        self.metrics.unlink(missing_ok=True)
        shutil.rmtree(self.model, ignore_errors=True)
        shutil.rmtree(self.plots, ignore_errors=True)
