"""A model that only infers (sft.evaluate, sft.report, sft.predict), made ready to run as fast
as the hardware allows: the precision `trainer.precision` decides, the layout its convolutions
run fastest in, and linear layers whose bias oneDNN adds inside the matmul."""

from __future__ import annotations

import logging
from contextlib import AbstractContextManager, nullcontext

import torch

from sft.problems.head import bf16_but_head
from sft.training.accelerator import Precision, decide_precision, keep_freed_memory
from sft.training.model import fast_convolutions

log = logging.getLogger(__name__)


def inference_precision(
    model: torch.nn.Module, choice: str, device: str, launched_with: str | None = None
) -> Precision:
    """The precision a model that only infers runs in, as `trainer.precision=choice` decides on
    `device`; logged. Where that is bf16, `model` is cast to bf16 once (floating inputs cast as
    they come in, the output layer kept in fp32 by bf16_but_head) instead of running under
    autocast, which casts weights and activations at every layer: 1.2x the examples/s of MiniLM
    and Whisper's encoder, the same predictions (BENCHMARKS.md); its linear layers then add
    their bias inside the matmul (`bias_in_matmul`). Not a model with batch norm:
    EfficientNet-Lite0 with bf16 weights changed 12 of 1,000 test predictions and lost 0.6
    points of accuracy, so it keeps autocast. A convolutional network's weights go
    channels-last (`fast_convolutions`; its depthwise convolutions stay in bf16 here, with no
    backward pass to slow them): EfficientNet-Lite0's bf16 forward 1.4-1.6x faster, same
    outputs."""
    chosen = decide_precision(choice, device, launched_with)
    if chosen.mixed_precision is None:  # accelerate launch chose it: that, by name
        chosen = Precision(launched_with, chosen.why)
    fast_convolutions(model)
    batch_norm = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if chosen.mixed_precision == "bf16" and not batch_norm:
        bf16_but_head(model)
        model.register_forward_pre_hook(_floats_in_bf16, with_kwargs=True)
        if device == "cpu":
            bias_in_matmul(model)
        chosen = Precision("no", chosen.why, weights="bf16")
    log.info("precision %s (%s)", chosen.label, chosen.why)
    keep_freed_memory()
    return chosen


def _floats_in_bf16(_, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    def cast(x):
        return x.to(torch.bfloat16) if torch.is_tensor(x) and x.is_floating_point() else x

    return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}


def autocast(chosen: Precision, device: str) -> AbstractContextManager:
    """Autocast as `chosen` says, for a model that runs outside an Accelerator (sft.predict's
    pipeline)."""
    if chosen.mixed_precision == "no":
        return nullcontext()
    dtype = torch.bfloat16 if chosen.mixed_precision == "bf16" else torch.float16
    return torch.autocast(device, dtype=dtype)


class BiasInMatmul(torch.nn.Linear):
    """A bf16 linear layer on CPU whose bias oneDNN adds as it writes the matmul's output.
    torch's own CPU linear copies the bias into the output first and then accumulates the
    product onto it: one more pass over every activation. Bit for bit the same outputs, and
    MiniLM's evaluation 1.1x faster (BENCHMARKS.md). The op has no gradient: inference only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != self.weight.dtype or x.device.type != "cpu":
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def bias_in_matmul(model: torch.nn.Module) -> int:
    """Make `model`'s bf16 `nn.Linear` layers on CPU `BiasInMatmul`s (their weights untouched)
    where torch has oneDNN's fused linear; how many. Subclasses of nn.Linear (peft's, say) keep
    their own forward. In fp32 the fused op measured no faster, so fp32 layers stay."""
    if not torch.backends.mkldnn.is_available() or not _has_fused_linear():
        return 0
    linear = [m for m in model.modules() if type(m) is torch.nn.Linear]
    on_cpu = [m for m in linear if m.weight.device.type == "cpu"]
    layers = [m for m in on_cpu if m.weight.dtype == torch.bfloat16]
    for layer in layers:
        layer.__class__ = BiasInMatmul
    return len(layers)


def _has_fused_linear() -> bool:
    try:
        torch.ops.mkldnn._linear_pointwise  # noqa: B018 (an op torch may not have been built with)
    except (AttributeError, RuntimeError):
        return False
    return True
