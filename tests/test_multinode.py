"""Two machines on the loopback address: two `accelerate launch` commands, machine ranks 0 and 1
with one gloo CPU process each, train one run that equals the same global batch on one machine;
machines that name different run directories stop with an error; the SLURM example script runs
its per-node command for two nodes. The one-machine run (two processes, the same settings) is
the session's shared two-rank reference (tests/helpers/distributed.py), launched once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.helpers.distributed import ACCELERATE, cpu_env, free_port, reference_run, training

pytestmark = pytest.mark.slow

SBATCH = ROOT / "examples" / "slurm" / "multinode.sbatch"


def run_together(commands: list[list[str]], cwd: Path, env: dict, timeout: float = 600) -> list:
    """Start every command at once and wait for all; returns (exit status, output) for each.
    Output goes to files: a full pipe would stall one machine and, waiting for it, the others.
    A hang fails the test instead of blocking it; every process group is killed in the end."""
    processes, logs = [], []
    try:
        for i, command in enumerate(commands):
            logs.append(cwd / f"machine-{i}.log")
            with logs[-1].open("w") as out:
                processes.append(
                    subprocess.Popen(
                        command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,  # a process group: the launcher and its workers
                    )
                )  # fmt: skip
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in processes):
            if any(p.returncode for p in processes):  # one failed: the others wait for it forever
                deadline = min(deadline, time.monotonic() + 60)
            if time.monotonic() > deadline:
                pytest.fail(f"still running after {timeout:.0f} s: {commands}")
            time.sleep(0.5)
    finally:
        for p in processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(p.returncode, log.read_text()) for p, log in zip(processes, logs, strict=True)]


def launch_machines(
    *args: str, cwd: Path, per_machine: tuple[tuple[str, ...], ...] = ((), ())
) -> list:
    """`accelerate launch --num_machines 2 --machine_rank 0|1 --main_process_ip 127.0.0.1` at once,
    one gloo CPU process per machine; `per_machine[rank]`: arguments for that machine alone."""
    port = str(free_port())

    def command(rank: int) -> list[str]:
        return [
            *ACCELERATE,
            "--multi_gpu",
            "--num_machines", "2",
            "--num_processes", "2",
            "--machine_rank", str(rank),
            "--main_process_ip", "127.0.0.1",
            "--main_process_port", port,
            *args,
            *per_machine[rank],
        ]  # fmt: skip

    # cpu_env: one thread per process, as the machines share this machine's cores.
    return run_together([command(0), command(1)], cwd, cpu_env())


def read_run(run: Path) -> tuple[list[dict], dict]:
    """History rows and final metrics, without the timings (they differ between any two runs)."""
    rows = [json.loads(line) for line in (run / "history.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "metrics.json").read_text())
    timings = {"examples_per_s", "train_seconds", "startup_seconds"}
    rows = [{k: v for k, v in row.items() if k not in timings} for row in rows]
    return rows, {k: v for k, v in metrics.items() if k not in timings}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, tiny_checkpoint):
    return reference_run(tmp_path_factory, tiny_checkpoint)


def test_two_machines_on_loopback_train_as_the_same_global_batch_on_one_machine(
    tmp_path, tiny_checkpoint, two_ranks
):
    common = training(tiny_checkpoint, two_ranks.corpus)
    # One shared output_dir, as a shared filesystem gives the machines of a cluster.
    machines = launch_machines(*common, f"output_dir={tmp_path / 'two-machines'}", cwd=tmp_path)
    for status, output in machines:
        assert status == 0, output[-4000:]
    assert "x 2 processes" in machines[0][1]
    # Rank 0 (machine 0) alone logs and writes; machine 1's process is its machine's local main
    # process, but not the run's.
    assert "run directory:" in machines[0][1]
    assert "run directory:" not in machines[1][1]
    # The same global batch on one machine: 2 processes of batch 4 (dropout draws the same),
    # the shared reference launched with these settings.
    assert two_ranks.args == common[2:]

    two_rows, two_metrics = read_run(tmp_path / "two-machines")
    one_rows, one_metrics = read_run(two_ranks.run_dir)
    assert len([r for r in two_rows if r["kind"] == "train"]) == 12  # once each: one writer
    assert [(r["kind"], r["step"]) for r in two_rows] == [(r["kind"], r["step"]) for r in one_rows]
    for two, one in zip(two_rows, one_rows, strict=True):  # loss, lr, eval metrics
        assert two.keys() == one.keys()
        for key, value in one.items():
            close = pytest.approx(value, rel=1e-5) if isinstance(value, float) else value
            assert two[key] == close, (key, two, one)
    for key in ("accuracy", "f1", "confusion_matrix", "num_examples", "best_step", "steps"):
        assert two_metrics[key] == one_metrics[key]
    assert two_metrics["loss"] == pytest.approx(one_metrics["loss"], rel=1e-5)
    assert not (tmp_path / "two-machines" / "checkpoints").exists()  # removed once done


def test_machines_with_different_output_dirs_stop_with_an_error(
    tmp_path, tiny_checkpoint, text_corpus
):
    # Each machine its own directory (a node-local path, or the default named after each
    # machine's launch time): every rank checkpoints into its own, so a resume would diverge.
    machines = launch_machines(
        *training(tiny_checkpoint, text_corpus),
        cwd=tmp_path,
        per_machine=((f"output_dir={tmp_path / 'a'}",), (f"output_dir={tmp_path / 'b'}",)),
    )
    for status, output in machines:
        assert status != 0
        assert "error: output_dir differs between processes" in output, output[-4000:]
    assert not (tmp_path / "a" / "history.jsonl").exists()


def test_slurm_script_syntax():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)


def test_slurm_script_runs_two_nodes_with_stand_in_srun(tmp_path, tiny_checkpoint, text_corpus):
    """Stand-ins for srun (the command once per node, at once, each with its SLURM_NODEID) and
    scontrol (both nodes are 127.0.0.1) run the script itself as SLURM would on two nodes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n"
        "while [[ $1 == -* ]]; do shift; done  # options such as --ntasks-per-node=1\n"
        "for ((node = 0; node < SLURM_NNODES; node++)); do\n"
        '  SLURM_NODEID=$node SLURM_PROCID=$node "$@" & pids+=($!)\n'
        "done\n"
        'status=0; for pid in "${pids[@]}"; do wait "$pid" || status=$?; done; exit $status\n'
    )
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf '127.0.0.1\\n127.0.0.1\\n'\n")
    for stand_in in bin_dir.iterdir():
        stand_in.chmod(0o755)
    run_dir = tmp_path / "run"
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "node[1-2]",
        "SLURM_GPUS_ON_NODE": "1",  # one process per node
        "MAIN_PORT": str(free_port()),
        "OUTPUT_DIR": str(run_dir),
        # srun/scontrol stand-ins first; `accelerate` from this environment.
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    overrides = [
        f"model.checkpoint={tiny_checkpoint}",
        f"data.path={text_corpus}",
        "data.max_length=32",
        "trainer.max_steps=2",
        "trainer.log_every=1",
        "trainer.progress=false",
    ]
    [(status, output)] = run_together([["bash", str(SBATCH), *overrides]], tmp_path, cpu_env(slurm))
    assert status == 0, output[-4000:]
    assert "x 2 processes" in output
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert (run_dir / "metrics.json").exists()
