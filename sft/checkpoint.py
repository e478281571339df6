"""Checkpoints, so that a run killed, preempted or crashed continues where it stopped and ends as
an uninterrupted run would have.

<run>/checkpoints/step-00000120/
    Accelerate's `save_state`: model, optimizer, scheduler, the RNG states of every process
    progress.pt     the loop's position (epoch, batches consumed), best result, history length
    complete.json   every file's size; written last, checked before a checkpoint is trusted

A checkpoint is written into a hidden `.partial-*` directory and renamed when complete; the
last `keep` are kept. Every process calls `save` and `load` (Accelerate coordinates them); only
the main process touches the directory itself.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import signal
from pathlib import Path

import torch
from accelerate import Accelerator

from sft.errors import Preempted, SftError
from sft.run_dir import RunDir
from sft.state import Progress

log = logging.getLogger(__name__)

MANIFEST = "complete.json"
PROGRESS = "progress.pt"
_NAME = re.compile(r"step-(\d+)$")


class Checkpoints:
    def __init__(self, accelerator: Accelerator, run: RunDir, keep: int):
        self.accelerator = accelerator
        self.run = run
        self.root = run.checkpoints
        self.keep = keep

    def save(self, p: Progress) -> Path:
        """Every process calls it at the same step (Accelerate saves each one's RNG state)."""
        acc = self.accelerator
        final = self.root / f"step-{p.step:08d}"
        partial = self.root / f".partial-{final.name}"
        if acc.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.save_state(str(partial))
        acc.wait_for_everyone()  # every process's RNG file is in place
        if acc.is_main_process:
            history_rows = len(self.run.read_history())  # what a resumed run keeps of it
            torch.save({**p.state_dict(), "history_rows": history_rows}, partial / PROGRESS)
            files = {
                str(f.relative_to(partial)): f.stat().st_size
                for f in sorted(partial.rglob("*"))
                if f.is_file()
            }
            (partial / MANIFEST).write_text(json.dumps({"step": p.step, "files": files}))
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
            log.info("checkpoint: %s", final)
        acc.wait_for_everyone()
        return final

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
        the loop's progress there."""
        problem = incomplete(directory)
        if problem:
            raise SftError(f"resume={directory}: not a complete checkpoint ({problem})")
        self.accelerator.load_state(str(directory))
        state = torch.load(directory / PROGRESS, weights_only=False)  # our own file
        if self.accelerator.is_main_process:
            self.run.truncate_history(state["history_rows"])
        return Progress.from_state_dict(state, metric, self.accelerator.device)

    def remove_all(self) -> None:
        if self.accelerator.is_main_process:
            shutil.rmtree(self.root, ignore_errors=True)
        self.accelerator.wait_for_everyone()


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
            log.warning("Ctrl-C: checkpointing and stopping at the next step (again to quit now)")
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
