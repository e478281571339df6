"""Checkpoints, so that a run killed, preempted or crashed continues where it stopped and ends as
an uninterrupted run would have.

<run>/checkpoints/
    step-00000120/
        model.safetensors       the weights, whole (`accelerator.get_state_dict`)
        optimizer.safetensors   the optimizer's state tensors; its param_groups in the metadata
        rng-<i>.safetensors     process i's torch RNG states; its Python and NumPy ones in the
                                metadata (every process writes its own)
        progress.json           the loop's position (epoch, batches consumed), best result,
                                scheduler, history length, and the file of the best weights
        complete.json           every file's size; written last, checked before a checkpoint
                                is trusted
    best-00000100.safetensors   the best weights when they are not a checkpoint's own; one file
                                for all the checkpoints that name it, removed when none does

Nothing is unpickled: tensors are safetensors, everything else JSON (safetensors metadata is
JSON too), so a checkpoint from elsewhere cannot run code when loaded. One copy of each set of
weights: a checkpoint taken at the best step names its own model.safetensors as the best.

A checkpoint is written into a hidden `.partial-*` directory and renamed when complete; the
last `keep` are kept. Every process calls `save` and `load`; only the main process writes the
shared files and touches the directories.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sft.errors import Preempted, SftError
from sft.runs.directory import RunDir, strict_json
from sft.training.optim import restore_state, saved_state
from sft.training.state import Progress, cpu_copy

log = logging.getLogger(__name__)

MANIFEST = "complete.json"
PROGRESS = "progress.json"
WEIGHTS = "model.safetensors"
OPTIMIZER = "optimizer.safetensors"
_NAME = re.compile(r"step-(\d+)$")


class Checkpoints:
    def __init__(self, accelerator: Accelerator, run: RunDir, keep: int):
        self.accelerator = accelerator
        self.run = run
        self.root = run.checkpoints
        self.keep = keep
        self.model = self.optimizer = self.scheduler = None
        self._best_written: int | None = None  # the best step this process wrote a file of

    def track(self, model: torch.nn.Module, optimizer, scheduler) -> None:
        """What `save` and `load` store and restore besides `Progress` (prepared by
        Accelerate; the scheduler is not)."""
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler

    def save(self, p: Progress) -> Path:
        """Every process calls it at the same step (each writes its own RNG states)."""
        acc = self.accelerator
        final = self.root / f"step-{p.step:08d}"
        partial = self.root / f".partial-{final.name}"
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        acc.wait_for_everyone()
        weights = acc.get_state_dict(self.model)  # every process: a gather under sharding
        _write(partial / f"rng-{acc.process_index}.safetensors", *_rng_state())
        if acc.is_main_process:
            _write(partial / WEIGHTS, cpu_copy(weights), {})
            _write(partial / OPTIMIZER, *saved_state(self.optimizer))
            best = self._best_weights(p)
            state = {
                **p.state_dict(),
                "history_rows": len(self.run.read_history()),  # what a resumed run keeps
                "best_weights": best,
                "scheduler": self.scheduler.state_dict(),
                "grad_scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
                "accumulated": acc.step,  # batches into gradient accumulation
            }
            (partial / PROGRESS).write_text(strict_json(state))  # -inf / NaN scores: null
        acc.wait_for_everyone()  # every process's RNG file is in place
        if acc.is_main_process:
            files = {
                str(f.relative_to(partial)): f.stat().st_size
                for f in sorted(partial.rglob("*"))
                if f.is_file()
            }
            if best is not None and best != WEIGHTS:
                files[best] = (partial / best).stat().st_size
            (partial / MANIFEST).write_text(strict_json({"step": p.step, "files": files}))
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            complete = self.complete()
            for old in complete[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            self._remove_unnamed_best(complete[-self.keep :])
            log.info("checkpoint: %s", final)
        acc.wait_for_everyone()
        return final

    def _best_weights(self, p: Progress) -> str | None:
        """The file of the best weights, relative to the checkpoint: its own weights when they
        are the best, else `../best-<step>.safetensors`, written from memory once per process
        (a file left by an earlier process may hold another lineage's weights)."""
        best = p.best
        if best.state is None:
            return None
        if best.step == p.step:
            return WEIGHTS
        name = f"best-{best.step:08d}.safetensors"
        if self._best_written != best.step:
            staging = self.root / f".partial-{name}"
            _write(staging, best.state, {})
            staging.rename(self.root / name)
            self._best_written = best.step
        return f"../{name}"

    def _remove_unnamed_best(self, kept: list[Path]) -> None:
        named = {json.loads((d / PROGRESS).read_text())["best_weights"] for d in kept}
        for path in self.root.glob("best-*.safetensors"):
            if f"../{path.name}" not in named:
                path.unlink()

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first; incomplete ones are skipped with a warning."""
        found = sorted(
            (int(m.group(1)), d)
            for d in (self.root.iterdir() if self.root.is_dir() else [])
            if (m := _NAME.match(d.name))
        )
        good = []
        for _, directory in found:
            problem = incomplete(directory)
            if problem:
                log.warning("ignoring checkpoint %s: %s", directory, problem)
            else:
                good.append(directory)
        return good

    def latest(self) -> Path | None:
        complete = self.complete()
        return complete[-1] if complete else None

    def resume_point(self, resume: str) -> Path | None:
        """The checkpoint to continue from: `resume=auto` takes the latest complete one, `never`
        deletes them all, anything else names a checkpoint directory."""
        if resume == "never":
            self.remove_all()
            return None
        if resume == "auto":
            return self.latest()
        path = Path(resume)
        if not path.is_dir():
            raise SftError(
                f"resume={resume}: no such checkpoint directory; use auto, never, or a "
                f"<run>/checkpoints/step-N directory"
            )
        return path

    def load(self, directory: Path, metric: str) -> Progress:
        """Restore model, optimizer, scheduler and RNGs from `directory`, cut the history back
        to the rows written by then (the resumed run writes the later ones again); returns
        the loop's progress there. Reads safetensors and JSON only."""
        problem = incomplete(directory)
        if problem:
            raise SftError(f"resume={directory}: not a complete checkpoint ({problem})")
        acc = self.accelerator
        try:
            state = json.loads((directory / PROGRESS).read_text())
        except (OSError, ValueError) as e:  # e.g. a checkpoint of an older sft (progress.pt)
            raise SftError(
                f"resume={directory}: no readable {PROGRESS} ({e}); resume from a checkpoint "
                f"written by this version, or start over with resume=never"
            ) from None
        # The module holds whole weights on every process: make_accelerator refuses sharding.
        try:
            acc.unwrap_model(self.model).load_state_dict(load_file(directory / WEIGHTS))
        except RuntimeError as err:  # another model's weights: names or shapes differ
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next((line for line in lines[1:] if "for" in line or "key" in line), lines[0])
            raise SftError(
                f"resume={directory}: its weights are not this model's ({detail[:200]}); resume "
                f"with the model.checkpoint and labels it trained with (config.yaml beside it), "
                f"or start over with resume=never"
            ) from None
        restore_state(self.optimizer, *_read(directory / OPTIMIZER))
        self.scheduler.load_state_dict(state["scheduler"])
        if acc.scaler is not None and state["grad_scaler"] is not None:
            acc.scaler.load_state_dict(state["grad_scaler"])
        acc.step = state["accumulated"]
        rng = directory / f"rng-{acc.process_index}.safetensors"
        if rng.is_file():
            _set_rng_state(*_read(rng))
        else:
            log.warning(
                "%s has no RNG states of process %d (written by fewer processes): random draws "
                "will differ from an uninterrupted run's",
                directory,
                acc.process_index,
            )
        best = state["best_weights"]
        best_state = load_file(directory / best) if best is not None else None
        if acc.is_main_process:
            self.run.truncate_history(state["history_rows"])
        return Progress.from_state_dict(state, metric, acc.device, best_state)

    def remove_all(self) -> None:
        if self.accelerator.is_main_process:
            shutil.rmtree(self.root, ignore_errors=True)
        self.accelerator.wait_for_everyone()


def _write(path: Path, tensors: dict[str, torch.Tensor], plain: dict) -> None:
    """Tensors as safetensors, with `plain` (JSON) in its metadata."""
    save_file(tensors, path, metadata={"json": json.dumps(plain)})


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(path, framework="pt") as f:
        plain = json.loads(f.metadata()["json"])
    return load_file(path), plain


def _rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's RNG states: torch's (CPU, and each GPU's) as tensors, Python's and
    NumPy's as JSON."""
    tensors = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors |= {f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())}
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    plain = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
    }
    return tensors, plain


def _set_rng_state(tensors: dict[str, torch.Tensor], plain: dict) -> None:
    torch.set_rng_state(tensors["cpu"])
    if torch.cuda.is_available():
        gpus = range(torch.cuda.device_count())
        torch.cuda.set_rng_state_all([tensors[f"cuda.{i}"] for i in gpus if f"cuda.{i}" in tensors])
    version, internal, gauss = plain["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = plain["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def incomplete(directory: Path) -> str | None:
    """Why `directory` is not a complete checkpoint, or None if it is."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return f"no readable {MANIFEST} (it is written last)"
    for name, size in manifest["files"].items():
        path = directory / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, not {size}"
    return None


class Preemption:
    """Remembers a SIGTERM (how clusters preempt) or a first Ctrl-C (SIGINT) so that training
    can checkpoint and stop at the next step; every process stops at the same step. A second
    Ctrl-C interrupts at once. A context manager: the previous handlers are back when it exits."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.signalled: str | None = None  # the name of the signal that asked to stop
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}

    def _handle(self, signum, frame) -> None:
        self.signalled = signal.Signals(signum).name
        if signum == signal.SIGINT:
            log.warning(
                "Ctrl-C: checkpointing and stopping after this step (once every step is done, "
                "the run finishes instead: it evaluates and saves); Ctrl-C again to quit now"
            )
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def __call__(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self.signalled is not None
        flag = torch.tensor([float(self.signalled is not None)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def stopped(self, step: int, where: Path) -> Preempted:
        """What ends the command once the checkpoint at `step` is in `where`."""
        by = self.signalled or "a signal on another process"
        return Preempted(
            f"stopped by {by} at step {step}; checkpoint saved in {where}. Run the same command "
            f"again to continue (resume=auto)",
            exit_status=130 if by == "SIGINT" else 0,  # Ctrl-C as shells report it
        )

    def __enter__(self) -> Preemption:
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
