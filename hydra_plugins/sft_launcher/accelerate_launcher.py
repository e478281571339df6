"""`hydra/launcher=accelerate`: each job of a sweep runs as its own `accelerate launch` process
group, so a multirun can sweep multi-GPU (or multi-process CPU) jobs:

    python -m sft.train -m hydra/launcher=accelerate hydra.launcher.num_processes=4 \\
        recipe=bert_news optimizer.lr=1e-5,3e-5

Jobs run one after another, each in its sweep sub-directory, as the basic launcher's do; the
job's return value (for sweepers such as Optuna) is its validation metric from metrics.json.
"""

# No `from __future__ import annotations`: Hydra's plugin scan runs this module outside
# sys.modules, where dataclasses cannot resolve string annotations.
import logging
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from sft.runs.directory import RunDir

log = logging.getLogger(__name__)


@dataclass
class AccelerateLauncherConf:
    _target_: str = "hydra_plugins.sft_launcher.accelerate_launcher.AccelerateLauncher"
    num_processes: int = 2  # per job
    args: list[str] = field(default_factory=list)  # more `accelerate launch` flags
    module: str = "sft.train"  # what each job runs


ConfigStore.instance().store(
    group="hydra/launcher", name="accelerate", node=AccelerateLauncherConf, provider="sft"
)


class AccelerateLauncher(Launcher):
    def __init__(self, num_processes: int = 2, args: Sequence[str] = (), module: str = "sft.train"):
        self.num_processes = num_processes
        self.args = list(args)
        self.module = module
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(
        self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
    ) -> Sequence[JobReturn]:
        assert self.config is not None and self.hydra_context is not None
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        returns = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            config = self.hydra_context.config_loader.load_sweep_config(
                self.config, list(overrides)
            )
            with open_dict(config):
                config.hydra.job.id = config.hydra.job.num = idx
            job_dir = sweep_dir / str(config.hydra.sweep.subdir)
            log.info("#%d: %s", idx, " ".join(filter_overrides(overrides)))
            done = subprocess.run(self._command(list(overrides), job_dir), check=False)
            returns.append(_job_return(list(overrides), config, job_dir, done.returncode))
        return returns

    def _command(self, overrides: list[str], job_dir: Path) -> list[str]:
        multi = ["--multi_gpu"] if self.num_processes > 1 else []
        return [
            sys.executable, "-m", "accelerate.commands.launch",
            *multi,
            "--num_processes", str(self.num_processes),
            "--main_process_port", str(_free_port()),
            *self.args,
            "-m", self.module,
            *overrides,
            f"hydra.run.dir={job_dir}",
        ]  # fmt: skip


def _job_return(overrides: list[str], config: DictConfig, job_dir: Path, code: int) -> JobReturn:
    ret = JobReturn(overrides=overrides, cfg=config, working_dir=str(job_dir), task_name="train")
    run = RunDir(job_dir)
    if code == 0 and run.finished():
        ret.status = JobStatus.COMPLETED
        metric = run.read_config().trainer.metric  # as the job resolved it (auto: by problem)
        ret.return_value = run.read_metrics()["validation"][metric]
    else:
        ret.status = JobStatus.FAILED
        ret.return_value = RuntimeError(
            f"job in {job_dir} failed (exit status {code}); its log is {job_dir}/train.log"
        )
    return ret


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
