"""Device, precision and distribution: the one place that sets them up. Everything else asks the
`Accelerator` this returns (`device`, `is_main_process`, `prepare`, `autocast`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from sft import trackers
from sft.config import TrainerConfig
from sft.errors import SftError

log = logging.getLogger(__name__)


def make_accelerator(
    trainer: TrainerConfig, logger: str, run_dir: str | Path, unfreezes_later: bool
) -> Accelerator:
    """Accelerate's engine for a run: precision, accumulation, tracker, DDP settings.
    `unfreezes_later`: parameters frozen at the start will train (gradual unfreezing)."""
    accelerator = Accelerator(
        mixed_precision=precision(trainer.precision),
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
    return accelerator


def precision(choice: str) -> str | None:
    """Accelerate's mixed_precision for `trainer.precision` on this hardware."""
    import torch

    gpu = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in (
        "1",
        "true",
    )
    if choice == "auto":
        if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
            # Chosen by `accelerate launch --mixed_precision` or `accelerate config` (the
            # launcher exports "no" when nothing was chosen: then the hardware decides).
            return None
        if not gpu:
            return "no"  # bf16 matmuls on CPUs without bf16 units run hundreds of times slower
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if choice == "fp32":
        return "no"
    if choice == "fp16" and not gpu:
        raise SftError(
            "trainer.precision=fp16 needs a GPU; use trainer.precision=fp32 or auto on CPU"
        )
    if choice == "bf16":
        if not gpu:
            log.warning("trainer.precision=bf16 on CPU: expect it to be far slower than fp32")
        return "bf16"
    if choice == "fp16":
        return "fp16"
    raise SftError(f"trainer.precision={choice} is not one of auto, fp32, bf16, fp16")
