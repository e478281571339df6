"""What the multi-process tests share: a free TCP port, `accelerate launch` of gloo processes on
CPU, offline, one thread each, and the one uninterrupted two-rank reference run that
test_multiprocess.py and test_multinode.py both compare against (launched once per session)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]
STAGGERED = Path(__file__).parent / "staggered_train.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(extra: dict | None = None) -> dict[str, str]:
    """The environment of a CPU launch: ACCELERATE_USE_CPU makes --multi_gpu start gloo
    processes on CPU (--cpu would start one); nothing comes from the Hub; one thread per
    process, since the ranks of a launch run at once and share the machine's cores."""
    return {
        **os.environ,
        "ACCELERATE_USE_CPU": "true",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(extra or {}),
    }


def launch(
    *args: str, cwd: Path, processes: int = 2, env: dict | None = None
) -> subprocess.CompletedProcess:
    """`accelerate launch --multi_gpu --num_processes N <args>` on CPU (gloo), offline."""
    command = [
        *ACCELERATE,
        "--multi_gpu",
        "--num_processes", str(processes),
        "--main_process_port", str(free_port()),
        *args,
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=cwd, env=cpu_env(env), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def training(checkpoint: Path, corpus: Path) -> list[str]:
    """`-m sft.train` and the settings of every two-rank run the reference is compared with."""
    return [
        "-m", "sft.train",
        "recipe=bert_news",
        f"model.checkpoint={checkpoint}",
        f"data.path={corpus}",
        "data.max_length=32",
        "data.max_train_samples=48",  # 6 steps of 2 x 4 per epoch, none short
        "trainer.batch_size=4",
        "trainer.eval_batch_size=4",  # several evaluation batches, the last one short
        "trainer.epochs=2",  # the first epoch's checkpoint is written by every rank
        "trainer.log_every=1",
        "optimizer.lr=5e-3",
        "trainer.progress=false",
    ]  # fmt: skip


class TwoRanks:
    """The reference run: `training()` on two gloo ranks started 2 s apart (staggered_train.py),
    without an output_dir, so that it also shows that ranks started apart agree on the default
    runs/<date>/<time>. Its launch's output, working directory and corpus come with it."""

    def __init__(self, base: Path, checkpoint: Path) -> None:
        from tests.conftest import write_text_corpus

        self.base, self.corpus = base, write_text_corpus(base / "corpus")
        self.args = training(checkpoint, self.corpus)[2:]  # the overrides, without -m sft.train
        self.launched = launch(str(STAGGERED), *self.args, cwd=base)
        self.run_dirs = [p for p in (base / "runs").glob("*/*") if p.is_dir()]
        self.run_dir = self.run_dirs[0]


# Built by the first test module that asks (one session, one launch), keyed by checkpoint.
_REFERENCE: dict[Path, TwoRanks] = {}


def reference_run(tmp_path_factory, checkpoint: Path) -> TwoRanks:
    if checkpoint not in _REFERENCE:
        _REFERENCE[checkpoint] = TwoRanks(tmp_path_factory.mktemp("two-ranks"), checkpoint)
    return _REFERENCE[checkpoint]
