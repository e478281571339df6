"""Dropout with cheaper random masks on CPU. torch's CPU dropout draws one random number per
element (`bernoulli_`): in a bf16 MiniLM training step on 2 cores that was 35% of the time, more
than every matmul together. Here one 64-bit draw makes four 16-bit uniforms, each compared with
p quantised to 1/65,536: the same Bernoulli(1 - p) keep mask, from torch's generator (seeded,
checkpointed and resumed as torch's own dropout is). `use_fast_dropout` puts it into a model: its
`nn.Dropout` modules, and the dropout on attention probabilities (an attention implementation
registered with transformers, "sft_sdpa": SDPA as transformers runs it, except where it would
drop attention probabilities on a CPU). GPUs keep torch's kernels, which are fast there."""

from __future__ import annotations

import torch
from torch import nn

ATTENTION = "sft_sdpa"
_LOWEST = torch.iinfo(torch.int16).min


def keep_mask(shape: torch.Size, p: float, device: torch.device) -> torch.Tensor:
    """A bool tensor of `shape`, each element True with probability 1 - round(p, 1/65,536)."""
    n = shape.numel()
    info = torch.iinfo(torch.int64)
    words = torch.randint(info.min, info.max, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return words.view(torch.int16)[:n].view(shape) >= _LOWEST + round(p * 65536)


def _dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """`torch.nn.functional.dropout(x, p, training)`, with `keep_mask`'s masks on CPU."""
    if not training or p == 0 or p >= 1 or x.device.type != "cpu":
        return nn.functional.dropout(x, p, training)
    kept = 1 - round(p * 65536) / 65536
    return x * keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1 / kept)


class FastDropout(nn.Dropout):
    """`nn.Dropout` drawing its masks with `keep_mask` on CPU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _dropout(x, self.p, self.training)


def use_fast_dropout(model: nn.Module) -> nn.Module:
    """`model` with FastDropout for each of its `nn.Dropout` modules and, where it runs
    transformers' SDPA attention, the "sft_sdpa" attention. Parameters and outputs (in
    evaluation) are untouched; saved models load as they were."""
    for name, module in list(model.named_modules()):
        if type(module) is nn.Dropout:
            parent, _, child = name.rpartition(".")
            fast = FastDropout(module.p, module.inplace).train(module.training)
            setattr(model.get_submodule(parent), child, fast)
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "_attn_implementation", None) == "sdpa":
        _register_attention()
        model.set_attn_implementation(ATTENTION)
    return model


def _attention(module, query, key, value, attention_mask, dropout: float = 0.0, **kwargs):
    """transformers' SDPA attention; where it would drop attention probabilities on a CPU (an
    encoder's: not causal, as many key as query heads), the same arithmetic (scores, mask,
    softmax, dropout, weighted sum) with `keep_mask`'s masks."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = kwargs.get("is_causal")
    causal = getattr(module, "is_causal", True) if causal is None else causal
    plain = not causal and kwargs.get("position_bias") is None and query.shape[1] == key.shape[1]
    if not (module.training and dropout > 0 and query.device.type == "cpu" and plain):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, **kwargs)
    scores = torch.matmul(query, key.transpose(2, 3)) * (
        kwargs.get("scaling") or query.shape[-1] ** -0.5
    )
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        # SDPA's masks: True where a key is attended to
        scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    elif attention_mask is not None:
        scores = scores + attention_mask
    weights = _dropout(scores.softmax(-1), dropout)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), None


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, _attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)  # masks as SDPA takes them
