"""The run directory: everything a run leaves behind, written so that nothing half-done looks done.
Every module that reads or writes a run's files asks `RunDir` where they are.

<run>/config.yaml     resolved config (written first)
<run>/history.jsonl   one JSON row per logged train step and per evaluation
<run>/param_groups.json  what trained, at which learning rate
<run>/model/          Hugging Face format: safetensors, config with id2label, tokenizer
<run>/metrics.json    final evaluation (written last: its presence means the run finished)
<run>/plots/          loss.png, accuracy.png, confusion_matrix.png, reliability.png
<run>/report.html     the error-analysis page (sft/reporting/page.py)
<run>/checkpoints/    the latest training checkpoints (sft/training/checkpoint.py)
<run>/evaluations/<data>-<split>/  metrics.json, confusion_matrix.png, report.html of
                      `sft.evaluate` and `sft.report` on other data
<run>/onnx/           model.onnx, its config, processor and export.json (`sft.export`)
<run>/train.log       the run's log  ·  <run>/.hydra/  the composed config, Hydra's, the overrides
<run>/.lock           the process that holds the directory

A command that does not run leaves the directory as it was, byte for byte: Hydra writes nothing
into it (conf/config.yaml), the log is held in memory (`PendingLog`), and `begin` writes the
first byte only once the run's data and model are built.
"""

from __future__ import annotations

import fcntl
import json
import logging
import logging.handlers
import math
import os
import shutil
import stat
import tempfile
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
        self.report = self.root / "report.html"
        self.checkpoints = self.root / "checkpoints"
        self.evaluations = self.root / "evaluations"
        self.onnx = self.root / "onnx"
        self._lock: Any = None  # the open lock file, while this process holds the directory

    # -- reading ------------------------------------------------------------------------------

    def holds_model(self) -> bool:
        """A run directory with a saved model (as opposed to a bare model directory)."""
        return self.model.is_dir() and self.config.is_file()

    def finished(self) -> bool:
        return self.metrics.is_file()

    def read_config(self) -> DictConfig:
        return OmegaConf.load(self.config)

    def read_metrics(self) -> dict[str, Any]:
        return read_json(self.metrics)

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
        lines = self.history.read_text().splitlines()
        return [_undefined(json.loads(line)) for line in lines if line]

    # -- writing, in the order a run writes ---------------------------------------------------

    def lock(self) -> None:
        """Claim the directory for this process until it exits, or an SftError if another live
        run holds it (two runs would interleave their history and checkpoints). The operating
        system drops the claim when the process ends, however it ends."""
        check_writable(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        handle = path.open("a+")  # an earlier run's lock file: opened, not changed
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
        self._lock = handle  # held open: closing it would release the claim

    def begin(
        self,
        config: Any,
        resumed: bool,
        launch: DictConfig | None = None,
        log: PendingLog | None = None,
    ) -> None:
        """The run starts writing here (the directory is locked, its data and model built):
        the lock's owner, the resolved config, Hydra's record of the launch (`launch`: the
        composed config), the log so far (`log`) and from now on; results of an earlier run
        removed, so that none can pass for this run's; the history too, unless this run
        resumes it."""
        self.root.mkdir(parents=True, exist_ok=True)
        if self._lock is not None:
            self._lock.truncate(0)
            self._lock.write(f"pid {os.getpid()}\n")
            self._lock.flush()
        if launch is not None:
            self._record_launch(launch)
        if log is not None:
            log.write_to(self.root / "train.log")
        self.config.write_text(OmegaConf.to_yaml(config, resolve=True))
        self.metrics.unlink(missing_ok=True)
        shutil.rmtree(self.model, ignore_errors=True)
        shutil.rmtree(self.plots, ignore_errors=True)
        self.report.unlink(missing_ok=True)
        if not resumed:
            self.history.unlink(missing_ok=True)

    def refuse_other_settings(self, config: Any) -> None:
        """An SftError naming the settings in which `config` (a new command's) differs from
        the finished run here, and the two ways on."""
        differ = differing_settings(self.read_config(), config)
        if differ:
            shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(differ.items())[:5])
            raise SftError(
                f"output_dir {self.root} holds a finished run with other settings ({shown}); "
                f"choose a new output_dir, or add resume=never to train again here, replacing it"
            )

    def _record_launch(self, config: DictConfig) -> None:
        """.hydra/: what Hydra itself writes there when left to (conf/config.yaml turns it
        off): the composed config, Hydra's own, and the command line's overrides."""
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return
        hydra = HydraConfig.instance().cfg
        folder = self.root / ".hydra"
        folder.mkdir(exist_ok=True)
        for name, part in (
            ("config.yaml", config),
            ("hydra.yaml", hydra),
            ("overrides.yaml", hydra.hydra.overrides.task),
        ):
            (folder / name).write_text(OmegaConf.to_yaml(part))

    def record(self, row: dict) -> None:
        with self.history.open("a") as f:
            f.write(strict_json(row) + "\n")

    def truncate_history(self, rows: int) -> None:
        """Keep the first `rows` rows (a resumed run writes those after its checkpoint again)."""
        kept = self.read_history()[:rows]
        self.history.write_text("".join(f"{strict_json(r)}\n" for r in kept))

    def write_param_groups(self, summary: dict) -> None:
        write_json(self.param_groups, summary)

    def write_results(
        self,
        save_model: Callable[[Path], None],
        result: dict[str, Any],
        draw: Callable[[], Any],
    ) -> None:
        """model/ (`save_model(directory)` writes it), plots/ and report.html (`draw()` draws
        them) and metrics.json, each written under a staging name first: model/ and then metrics.json (whose presence says the run
        completed) appear only once everything is on disk, so a full disk leaves neither."""
        model = self.root / "model.partial"
        metrics = self.metrics.with_suffix(".partial")
        try:
            shutil.rmtree(model, ignore_errors=True)
            save_model(model)
            draw()
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
    try:  # what the permission bits do not say (/sys, /proc, a read-only mount): ask the system
        tempfile.TemporaryFile(dir=nearest).close()
    except OSError as err:
        raise SftError(
            f"{key} {root} cannot be written: {nearest} refuses new files ({err.strerror}); "
            f"choose another {key}"
        ) from None


# Settings that say how a run is watched, kept or published, not what it computes: a finished
# run given other values of these is the same run.
NOT_THE_RESULT = ("output_dir", "resume", "dry_run", "push_to_hub", "hub", "logger",
                  "trainer.progress", "trainer.checkpoint_every", "trainer.keep_checkpoints",
                  "data.num_workers")  # fmt: skip


def differing_settings(saved: DictConfig, config: Any) -> dict[str, tuple[Any, Any]]:
    """key -> (the finished run's value, `config`'s: the typed config of a new command)
    wherever they differ, `NOT_THE_RESULT` aside."""
    old = _flat(OmegaConf.to_container(saved, resolve=True))
    new = _flat(OmegaConf.to_container(OmegaConf.structured(config), resolve=True))
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(set(old) | set(new))
        if old.get(key) != new.get(key)
        and not any(key == k or key.startswith(f"{k}.") for k in NOT_THE_RESULT)
    }


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}"""
    if not isinstance(tree, dict) or not tree:
        return {prefix.rstrip("."): tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flat(value, f"{prefix}{key}."))
    return flat


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
    path.write_text(strict_json(data, indent=2) + "\n")


def strict_json(data: Any, indent: int | None = None) -> str:
    """JSON that strict readers (JavaScript's JSON.parse, jq) accept: an undefined score (NaN,
    such as a correlation of constant values) or an infinite one is written as null."""
    return json.dumps(_finite(data), indent=indent, allow_nan=False)


def read_json(path: Path) -> Any:
    """What `write_json` wrote, an undefined score (null) read back as NaN."""
    return _undefined(json.loads(path.read_text()))


def _undefined(value: Any) -> Any:
    if value is None:
        return math.nan
    if isinstance(value, dict):
        return {k: _undefined(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_undefined(v) for v in value]
    return value


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


class PendingLog(logging.handlers.MemoryHandler):
    """The log of a command until its run directory is claimed: held in memory (a command that
    is refused leaves no trace in a run's train.log), then written to train.log with everything
    after it (`write_to`). Installed on the root logger by `hold`; `close` removes it."""

    FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's

    @classmethod
    def hold(cls) -> PendingLog:
        pending = cls(capacity=1_000_000, flushLevel=logging.CRITICAL + 1)
        logging.getLogger().addHandler(pending)
        return pending

    def write_to(self, path: Path) -> None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(self.FORMAT))
        self.setTarget(handler)
        self.flush()
        self.capacity = 0  # from now on every record goes straight through

    def close(self) -> None:
        logging.getLogger().removeHandler(self)
        target = self.target
        super().close()  # flushes to the target, if any
        if target is not None:
            target.close()
