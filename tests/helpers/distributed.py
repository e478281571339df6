"""What the multi-process tests share: a free TCP port and `accelerate launch` of gloo processes
on CPU, offline."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ACCELERATE = [sys.executable, "-m", "accelerate.commands.launch"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(extra: dict | None = None) -> dict[str, str]:
    """The environment of a CPU launch: ACCELERATE_USE_CPU makes --multi_gpu start gloo
    processes on CPU (--cpu would start one); nothing comes from the Hub."""
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", **(extra or {})}


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
