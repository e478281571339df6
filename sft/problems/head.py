"""The classification head: the linear layer whose outputs are the logits, found in any
model (a peft model's trained copy included); where its bias starts (`Problem.head_bias`);
computing it in fp32 under autocast."""

from __future__ import annotations

import logging
import types

import numpy as np
import torch

from sft.errors import SftError

log = logging.getLogger(__name__)


def output_layer(model: torch.nn.Module, outputs: int, otherwise: str) -> torch.nn.Linear:
    """The linear layer whose outputs are `model`'s logits: the last one registered with
    `outputs` features and a bias (in a peft model, the trained copy of the head). `otherwise`:
    the setting that avoids needing one, named in the error."""
    found = output_layers(model, outputs)
    if not found:
        raise SftError(
            f"{type(model).__name__} has no linear output layer of {outputs} features with a "
            f"bias to fold the target scale into; set {otherwise}"
        )
    return found[-1]


def output_layers(model: torch.nn.Module, outputs: int) -> list[torch.nn.Linear]:
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == outputs and m.bias is not None
    ]


def head_in_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """`model`, its output layer computing in fp32 under autocast (bf16 everywhere else). The
    logits feed losses, thresholds and scores, and a regression head with the target scale
    folded in (regression.py) outputs values such as years, which bf16 rounds to multiples of 8.
    The layer is a sliver of the work. A copy of the layer (peft's trained head) keeps it."""
    layers = output_layers(model, model.config.num_labels)
    if layers:
        layers[-1].forward = types.MethodType(_fp32_linear, layers[-1])
    return model


def bf16_but_head(model: torch.nn.Module) -> torch.nn.Module:
    """`model`'s floating weights and buffers cast to bf16 in place, its output layer's kept in
    fp32 (cast and back, a bias of 2016.37 would come back as 2016)."""
    layers = output_layers(model, model.config.num_labels)
    head = {id(p) for p in layers[-1].parameters()} if layers else set()
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            if tensor.is_floating_point() and id(tensor) not in head:
                tensor.data = tensor.data.to(torch.bfloat16)
    return model


def _fp32_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.float()
    with torch.autocast(x.device.type, enabled=False):
        return torch.nn.functional.linear(x.float(), self.weight.float(), bias)


def start_head_bias(model: torch.nn.Module, loading: dict, bias: np.ndarray) -> None:
    """Start the output layer's bias at `bias` when the checkpoint did not hold that layer
    (missing, or sized for other labels): a head it trained keeps what it learned."""
    try:
        layer = output_layer(model, len(bias), "")
    except SftError:  # no single biased output layer: the model's own initialisation stands
        log.info("no output layer of %d features with a bias; its bias starts as built", len(bias))
        return
    name = next(n for n, m in model.named_modules() if m is layer)
    new = set(loading.get("missing_keys", ())) | {k[0] for k in loading.get("mismatched_keys", ())}
    if f"{name}.bias" in new:
        with torch.no_grad():
            layer.bias.copy_(torch.as_tensor(bias, dtype=layer.bias.dtype))
