"""Device, precision and distribution: the one place that sets them up. Everything else asks the
`Accelerator` this returns (`device`, `is_main_process`, `prepare`, `autocast`)."""

from __future__ import annotations

import ctypes
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedDataParallelKwargs, gather_object, parse_flag_from_env

from sft.config import Config
from sft.errors import SftError
from sft.training import trackers

log = logging.getLogger(__name__)


def make_accelerator(cfg: Config, run_dir: str | Path) -> Accelerator:
    """Accelerate's engine for a run: precision, accumulation, tracker, DDP settings."""
    trainer = cfg.trainer
    unfreezes_later = cfg.finetune.strategy == "gradual"  # frozen parameters will train
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
    chosen = decide_precision(trainer.precision, device_type(), launcher_choice())
    accelerator = fresh_accelerator(
        mixed_precision=chosen.mixed_precision,
        log_with=trackers.log_with(cfg.logger.name),
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
    log.info("precision %s (%s)", *chosen.report(accelerator).values())
    on_cpu = accelerator.device.type == "cpu"
    if accelerator.mixed_precision == "bf16" and on_cpu and "amx_bf16" not in cpu_bf16_units():
        log.warning("bf16 on a CPU without AMX: expect it to be slower than fp32")
    return accelerator


def fresh_accelerator(**settings) -> Accelerator:
    """`Accelerator(**settings)`, whatever an earlier one in this process chose. Accelerate
    keeps its state per process and refuses a second precision, yet a sweep runs its jobs one
    after another in one process (`trainer.precision=fp32,bf16`). The processes and their group
    (PartialState) stay."""
    AcceleratorState._reset_state(reset_partial_state=False)
    keep_freed_memory()
    return Accelerator(**settings)


# Blocks up to this size come from malloc's heap, and up to this much free heap stays with the
# process (glibc's defaults: 128 KiB, raised by itself to at most 32 MiB, and 128 KiB).
KEEP_FREED_BYTES = 256 * 2**20


def keep_freed_memory() -> None:
    """Have glibc's malloc keep memory that torch frees, for the next tensor of that size, instead
    of handing it back to the kernel. A model's activations (a 64-text batch's 18 MiB GELU
    input, say) are larger than glibc's largest heap block, so each was a fresh mmap whose pages
    the kernel zeroed on first touch: MiniLM's feed-forward layer (linear + GELU, 64 texts, bf16)
    took 18 ms instead of 6. Costs at most KEEP_FREED_BYTES of idle memory. A no-op outside
    glibc (macOS, musl)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
    mallopt(M_MMAP_THRESHOLD, KEEP_FREED_BYTES)
    mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)


def precision_report(accelerator: Accelerator, choice: str) -> dict[str, str]:
    """The precision `accelerator` runs in and why, for metrics.json and the model card."""
    return decide_precision(choice, accelerator.device.type, launcher_choice()).report(accelerator)


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


@dataclass(frozen=True)
class Precision:
    """What a run computes in, and why: `trainer.precision` decided against the hardware."""

    mixed_precision: str | None  # Accelerate's argument: "no", "bf16", "fp16"; None: the launcher's
    why: str
    weights: str = "fp32"  # "bf16": a model that only infers, cast once (inference_precision)

    @property
    def label(self) -> str:
        """As people say it: fp32, bf16, fp16; "bf16 weights" for a model cast to bf16."""
        return "bf16 weights" if self.weights == "bf16" else named(self.mixed_precision)

    def report(self, accelerator: Accelerator) -> dict[str, str]:
        """For metrics.json, the summary line and the card: the precision that ran, and why."""
        if self.weights == "bf16":
            why = f"{self.why}; weights cast to bf16, the output layer kept in fp32"
            return {"precision": "bf16", "precision_reason": why}
        return {"precision": named(accelerator.mixed_precision), "precision_reason": self.why}


def named(mixed_precision: str) -> str:
    """Accelerate's mixed_precision as people say it: fp32 for "no"."""
    return "fp32" if mixed_precision == "no" else mixed_precision


def decide_precision(choice: str, device: str, launched_with: str | None) -> Precision:
    """Accelerate's mixed_precision for `trainer.precision` on `device` (Accelerate's device
    type: cuda, mps, xpu, cpu, ...). `launched_with`: the precision `accelerate launch` was told
    (see `launcher_choice`), which `auto` leaves to Accelerate. On a CPU, `auto` is bf16 only
    where the CPU has AMX tiles for bf16: there a MiniLM step runs 1.5x faster than in fp32.
    With AVX-512 BF16 alone, bf16 measured slower than fp32 (0.77x a MiniLM step, 0.55x a
    Whisper step: oneDNN limited to that ISA on an AMX machine); with neither, torch emulates
    bf16 hundreds of times slower. BENCHMARKS.md has the figures."""
    from accelerate.utils import is_bf16_available

    if choice == "auto":
        if launched_with is not None:
            return Precision(None, f"accelerate launch was given mixed_precision={launched_with}")
        if device == "cpu":
            units = cpu_bf16_units()
            if "amx_bf16" in units:
                return Precision("bf16", f"auto: the CPU ({cpu_name()}) has amx_bf16")
            missing = "no AMX (avx512_bf16 alone is slower than fp32)" if units else "no bf16 units"
            return Precision("no", f"auto: the CPU ({cpu_name()}) has {missing}")
        mixed = "bf16" if is_bf16_available() else "fp16"
        return Precision(mixed, f"auto: {mixed} is what {device} supports best")
    why = f"trainer.precision={choice}"
    if choice == "fp32":
        return Precision("no", why)
    if choice == "fp16" and device == "cpu":
        raise SftError(
            "trainer.precision=fp16 needs an accelerator (CUDA, MPS, XPU, ...); use "
            "trainer.precision=fp32 or auto on CPU"
        )
    if choice in ("bf16", "fp16"):
        return Precision(choice, why)  # Accelerate refuses it on a device that lacks it
    raise SftError(f"trainer.precision={choice} is not one of auto, fp32, bf16, fp16")


def cpu_bf16_units() -> list[str]:
    """The CPU's bf16 units by their flag names: "amx_bf16", "avx512_bf16" or neither. Not
    `torch.ops.mkldnn._is_mkldnn_bf16_supported()`: that is true where bf16 is emulated."""
    if hasattr(torch.cpu, "get_capabilities"):
        capabilities = torch.cpu.get_capabilities()
    else:  # older torch: its private probes
        capabilities = {
            "amx_bf16": getattr(torch.cpu, "_is_amx_tile_supported", bool)(),
            "avx512_bf16": getattr(torch.cpu, "_is_avx512_bf16_supported", bool)(),
        }
    return [flag for flag in ("amx_bf16", "avx512_bf16") if capabilities.get(flag)]


def cpu_name() -> str:
    """The CPU's model name, as /proc/cpuinfo (or the platform) gives it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


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
