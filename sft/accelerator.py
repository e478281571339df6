"""Device, precision and distribution: the one place that sets them up. Everything else asks the
`Accelerator` this returns (`device`, `is_main_process`, `prepare`, `autocast`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, gather_object, parse_flag_from_env

from sft import trackers
from sft.config import TrainerConfig
from sft.errors import SftError

log = logging.getLogger(__name__)


def make_accelerator(
    trainer: TrainerConfig, logger: str, run_dir: str | Path, unfreezes_later: bool
) -> Accelerator:
    """Accelerate's engine for a run: precision, accumulation, tracker, DDP settings.
    `unfreezes_later`: parameters frozen at the start will train (gradual unfreezing)."""
    # Checkpoints, the best weights and the saved model need whole weights on every process.
    # Checked as Accelerate reads it, and before it: on a CPU-only machine its FSDP plugin
    # fails with a traceback.
    for variable in (
        "ACCELERATE_USE_FSDP",
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_USE_MEGATRON_LM",
    ):
        if os.environ.get(variable, "false").lower() == "true":
            raise SftError(
                f"{variable}=true (from accelerate launch or `accelerate config`): sharded "
                f"training (FSDP, DeepSpeed, Megatron-LM) is not supported; use DDP "
                f"(accelerate launch --multi_gpu ...) or a single process"
            )
    accelerator = Accelerator(
        mixed_precision=precision(trainer.precision, device_type(), launcher_choice()),
        log_with=trackers.log_with(logger),
        project_dir=str(run_dir),  # trackers write there
        gradient_accumulation_steps=trainer.grad_accum_steps,
        # Some parameters get no gradient in a step: blocks frozen for a while (gradual),
        # layers skipped by LayerDrop (wav2vec2, HuBERT). DDP must expect that, as HF Trainer
        # does unless gradient checkpointing is on.
        kwargs_handlers=[
            DistributedDataParallelKwargs(
                find_unused_parameters=unfreezes_later or not trainer.gradient_checkpointing
            )
        ],
    )
    if not accelerator.is_main_process:
        logging.getLogger("sft").setLevel(logging.WARNING)  # one voice: rank zero's
    check_one_run_dir(run_dir)
    return accelerator


def check_one_run_dir(run_dir: str | Path) -> None:
    """An SftError on every process unless all name the same run directory. Rank 0 writes the
    run's files, but every rank saves its RNG state into the checkpoints and resumes from what
    it finds there: machines that each chose their own directory (the default is named after
    each machine's launch time) would checkpoint apart and resume from different steps."""
    dirs = gather_object([os.path.abspath(run_dir)])  # [run_dir] alone in a single process
    other = next((rank for rank, d in enumerate(dirs) if d != dirs[0]), None)
    if other is not None:
        raise SftError(
            f"output_dir differs between processes: rank 0 has {dirs[0]}, rank {other} has "
            f"{dirs[other]}; on several machines pass the same output_dir=<a path on a shared "
            f"filesystem> to every one"
        )


def device_type() -> str:
    """Where Accelerate will train: cuda, mps, xpu, cpu, ... Its shared state is set up here as
    the Accelerator's own would be (ACCELERATE_USE_CPU forces the CPU, and gloo across processes
    then), so the Accelerator made next takes it over unchanged."""
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device.type


def precision(choice: str, device: str, launched_with: str | None) -> str | None:
    """Accelerate's mixed_precision for `trainer.precision` on `device` (Accelerate's device
    type: cuda, mps, xpu, cpu, ...). `launched_with`: the precision `accelerate launch` was told
    (see `launcher_choice`), which `auto` leaves to Accelerate (None)."""
    from accelerate.utils import is_bf16_available

    if choice == "auto":
        if launched_with is not None:
            return None
        if device == "cpu":
            return "no"  # bf16 matmuls on CPUs without bf16 units run hundreds of times slower
        return "bf16" if is_bf16_available() else "fp16"
    if choice == "fp32":
        return "no"
    if choice == "fp16" and device == "cpu":
        raise SftError(
            "trainer.precision=fp16 needs an accelerator (CUDA, MPS, XPU, ...); use "
            "trainer.precision=fp32 or auto on CPU"
        )
    if choice == "bf16" and device == "cpu":
        log.warning("trainer.precision=bf16 on CPU: expect it to be far slower than fp32")
    if choice in ("bf16", "fp16"):
        return choice  # Accelerate refuses it on a device that lacks it
    raise SftError(f"trainer.precision={choice} is not one of auto, fp32, bf16, fp16")


def launcher_choice() -> str | None:
    """The precision `accelerate launch` was given by `--mixed_precision` or a config file (from
    `accelerate config`), or None when nobody chose one. The launcher exports "no" in both cases,
    so for "no" its own command line (the parent process's) and config file tell them apart."""
    exported = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if exported != "no":
        return exported
    return "no" if told_no(launch_arguments()) else None


def told_no(arguments: list[str]) -> bool:
    """Whether `accelerate launch <arguments>` chose its precision rather than defaulting."""
    from accelerate.commands.config import default_config_file

    if any(a.startswith("--mixed_precision") for a in arguments):
        return True
    given = arguments.index("--config_file") + 1 if "--config_file" in arguments else None
    config = Path(arguments[given] if given and given < len(arguments) else default_config_file)
    try:
        settings = yaml.safe_load(config.read_text())  # YAML or JSON, as accelerate writes them
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(settings, dict) and "mixed_precision" in settings


def launch_arguments() -> list[str]:
    """The parent process's command line: `accelerate launch ...` for the processes it starts
    (directly or through torchrun's agent, which runs inside it). Linux only; [] elsewhere."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]
