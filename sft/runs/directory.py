"""The run directory: everything a run leaves behind, written so that nothing half-done looks done.
Every module that reads or writes a run's files asks `RunDir` where they are.

<run>/config.yaml     resolved config (written first)
<run>/history.jsonl   one JSON row per logged train step and per evaluation
<run>/param_groups.json  what trained, at which learning rate
<run>/model/          Hugging Face format: safetensors, config with id2label, tokenizer
<run>/metrics.json    final evaluation (written last: its presence means the run finished)
<run>/plots/          loss.png, accuracy.png, confusion_matrix.png
<run>/checkpoints/    the latest training checkpoints (sft/training/checkpoint.py)
<run>/evaluations/<data>-<split>/  metrics.json and confusion_matrix.png of `sft.evaluate`
<run>/onnx/           model.onnx, its config, processor and export.json (`sft.export`)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sft.errors import SftError


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.yaml"
        self.history = self.root / "history.jsonl"
        self.param_groups = self.root / "param_groups.json"
        self.model = self.root / "model"
        self.metrics = self.root / "metrics.json"
        self.plots = self.root / "plots"
        self.checkpoints = self.root / "checkpoints"
        self.evaluations = self.root / "evaluations"
        self.onnx = self.root / "onnx"

    # -- reading ------------------------------------------------------------------------------

    def holds_model(self) -> bool:
        """A run directory with a saved model (as opposed to a bare model directory)."""
        return self.model.is_dir() and self.config.is_file()

    def finished(self) -> bool:
        return self.metrics.is_file()

    def read_config(self) -> DictConfig:
        return OmegaConf.load(self.config)

    def read_metrics(self) -> dict[str, Any]:
        return json.loads(self.metrics.read_text())

    def read_finished(self) -> tuple[DictConfig, dict[str, Any]]:
        """The resolved config and final metrics; SftError if the run did not finish."""
        for path in (self.config, self.metrics):
            if not path.is_file():
                raise SftError(
                    f"{self.root} has no {path.name}: not the directory of a finished sft run "
                    f"(finished runs hold config.yaml, metrics.json and model/)"
                )
        return self.read_config(), self.read_metrics()

    def read_history(self) -> list[dict]:
        if not self.history.exists():
            return []
        return [json.loads(line) for line in self.history.read_text().splitlines() if line]

    # -- writing, in the order a run writes ---------------------------------------------------

    def lock(self) -> None:
        """Claim the directory for this process until it exits, or an SftError if another live
        run holds it (two runs would interleave their history and checkpoints). The operating
        system drops the claim when the process ends, however it ends."""
        check_writable(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise SftError(
                f"output_dir {self.root} is in use by a run that is still going ({holder}); wait "
                f"for it to end, stop it, or choose another output_dir"
            ) from err
        handle.truncate(0)
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        self._lock = handle  # held open: closing it would release the claim

    def begin(self, config: Any, resumed: bool) -> None:
        """The resolved config first; results of an earlier run here removed, so that none can
        pass for this run's; the history too, unless this run resumes it."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(OmegaConf.to_yaml(config, resolve=True))
        self.metrics.unlink(missing_ok=True)
        shutil.rmtree(self.model, ignore_errors=True)
        shutil.rmtree(self.plots, ignore_errors=True)
        if not resumed:
            self.history.unlink(missing_ok=True)

    def record(self, row: dict) -> None:
        with self.history.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def truncate_history(self, rows: int) -> None:
        """Keep the first `rows` rows (a resumed run writes those after its checkpoint again)."""
        self.history.write_text("".join(f"{json.dumps(r)}\n" for r in self.read_history()[:rows]))

    def write_param_groups(self, summary: dict) -> None:
        write_json(self.param_groups, summary)

    def write_results(
        self,
        save_model: Callable[[Path], None],
        result: dict[str, Any],
        draw: Callable[[Path], Any],
    ) -> None:
        """model/ (`save_model(directory)` writes it), plots/ (`draw(directory)` draws them)
        and metrics.json, each written
        under a staging name first: model/ and then metrics.json (whose presence says the run
        completed) appear only once everything is on disk, so a full disk leaves neither."""
        model = self.root / "model.partial"
        metrics = self.metrics.with_suffix(".partial")
        try:
            shutil.rmtree(model, ignore_errors=True)
            save_model(model)
            draw(self.plots)
            write_json(metrics, result)
            shutil.rmtree(self.model, ignore_errors=True)
            model.rename(self.model)
            metrics.rename(self.metrics)
        finally:  # after a failure: no half-written copies taking the space (no-ops otherwise)
            shutil.rmtree(model, ignore_errors=True)
            metrics.unlink(missing_ok=True)


def check_writable(root: str | Path, key: str = "output_dir") -> None:
    """An SftError unless a run can create and write `root`: the nearest folder that exists
    (`root` or an ancestor) must be writable and have a write permission bit. Root ignores
    permission bits; a folder made read-only on purpose refuses runs as root too."""
    root = Path(root).absolute()
    nearest = next(p for p in (root, *root.parents) if p.exists())
    if not nearest.is_dir():
        raise SftError(f"{key} {root} cannot be created: {nearest} is a file; choose another")
    mode = nearest.stat().st_mode
    if not mode & 0o222 or not os.access(nearest, os.W_OK):
        raise SftError(
            f"{key} {root} cannot be written: {nearest} is read-only "
            f"({stat.filemode(mode)}); choose another {key}, or make {nearest} writable"
        )


class OutputDirCheck(Callback):
    """Hydra callback (conf/config.yaml): Hydra creates the run (or sweep) directory and its log
    before sft's code runs, so an unwritable one is refused here, before it is touched."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_writable(config.hydra.run.dir, "output_dir")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        _exit_unless_writable(config.hydra.sweep.dir, "hydra.sweep.dir")


def _exit_unless_writable(root: str, key: str) -> None:
    from sft.cli import exits_on_user_error

    with exits_on_user_error():  # Hydra would print an SftError with its traceback
        check_writable(root, key)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
