"""What trains, at which learning rate: freezing strategies and optimizer parameter groups.

Works on any Hugging Face classifier by reading its structure, not a per-model name list:
- the *blocks* are the largest list of same-class modules (transformer layers, ResNet stages,
  EfficientNet blocks, wav2vec2 and Whisper encoder layers);
- the *trunk* is the model's top-level child holding them; its parameters registered before the
  first block form *below* (embeddings, stems), those after the last block form *above*
  (poolers, final norms);
- the *head* is every top-level child registered after the trunk (classifier, projector).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from sft.config import FinetuneConfig
from sft.errors import SftError


@dataclass
class Layout:
    """Parameter names of a model, sorted into the parts fine-tuning cares about."""

    below: list[str] = field(default_factory=list)
    blocks: list[list[str]] = field(default_factory=list)  # bottom to top
    above: list[str] = field(default_factory=list)
    head: list[str] = field(default_factory=list)
    blocks_path: str = ""  # e.g. "bert.encoder.layer"

    @cached_property
    def _parts(self) -> dict[str, str]:
        parts = dict.fromkeys(self.below, "below") | dict.fromkeys(self.above, "above")
        for i, block in enumerate(self.blocks):
            parts |= dict.fromkeys(block, f"block.{i}")
        return parts | dict.fromkeys(self.head, "head")

    def part_of(self, name: str) -> str:
        """'below', 'block.<i>', 'above' or 'head' for a parameter name."""
        return self._parts.get(name, "below")


def find_layout(model: torch.nn.Module) -> Layout:
    layout = layout_or_none(model)
    if layout is None:
        raise SftError(
            f"{type(model).__name__} has no repeated blocks (no list of same-class modules) to "
            f"freeze or unfreeze by; use finetune=full, head_only or pattern"
        )
    return layout


def layout_or_none(model: torch.nn.Module) -> Layout | None:
    blocks_path, block_list = _largest_block_list(model)
    if block_list is None:
        return None
    names = [n for n, _ in model.named_parameters()]
    block_names = [
        [f"{blocks_path}.{i}.{n}" for n, _ in block.named_parameters()]
        for i, block in enumerate(block_list)
    ]
    trunk = blocks_path.split(".")[0]
    children = [name for name, _ in model.named_children()]
    after_trunk = set(children[children.index(trunk) + 1 :])
    head = [n for n in names if n.split(".")[0] in after_trunk]
    placed = {n for block in block_names for n in block} | set(head)
    first = names.index(block_names[0][0])
    last = names.index(block_names[-1][-1])
    rest = [(i, n) for i, n in enumerate(names) if n not in placed]
    return Layout(
        below=[n for i, n in rest if i < first],
        blocks=block_names,
        above=[n for i, n in rest if i > last],
        head=head,
        blocks_path=blocks_path,
    )


def _largest_block_list(model: torch.nn.Module):
    best, best_size = ("", None), 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = (name, module), size
    return best


def apply_strategy(
    model: torch.nn.Module,
    strategy: str,
    k: int = 2,
    train: list[str] | tuple[str, ...] = (),
    freeze: list[str] | tuple[str, ...] = (),
) -> None:
    """Set `requires_grad` for `strategy`: full | head_only | top_k | pattern | gradual (its
    start: the head alone; see `GradualUnfreezing`). lora: see `apply_lora`.

    Parameters frozen before (a speech model's feature encoder) stay frozen, so
    `model.freeze_feature_encoder` composes with every strategy.
    """
    params = dict(model.named_parameters())
    already_frozen = {n for n, p in params.items() if not p.requires_grad}
    if strategy == "full":
        trainable = set(params)
    elif strategy == "head_only":
        trainable = set(find_layout(model).head)
    elif strategy == "top_k":
        layout = find_layout(model)
        if not 1 <= k <= len(layout.blocks):
            raise SftError(
                f"finetune.k={k}, but {type(model).__name__} has {len(layout.blocks)} blocks "
                f"({layout.blocks_path}); choose k between 1 and {len(layout.blocks)}"
            )
        trainable = _top(layout, k)
    elif strategy == "gradual":
        trainable = set(find_layout(model).head)  # GradualUnfreezing opens the blocks later
    elif strategy == "pattern":
        layout = layout_or_none(model)
        head = set(layout.head) if layout else set()
        chosen = _matching(params, train, "finetune.train") if train else set(params)
        trainable = (chosen | head) - _matching(params, freeze, "finetune.freeze")
    else:
        raise SftError(
            f"finetune.strategy={strategy} is not one of full, head_only, top_k, pattern, "
            f"gradual, lora"
        )
    for name, param in params.items():
        param.requires_grad = name in trainable and name not in already_frozen
    if not any(p.requires_grad for p in params.values()):
        raise SftError(
            f"finetune.strategy={strategy} leaves no parameter trainable; train more (e.g. "
            f"finetune=head_only) or freeze less"
        )


def _top(layout: Layout, k: int) -> set[str]:
    """The head, the top `k` blocks and, when any block trains, what sits above the blocks."""
    top = {n for block in layout.blocks[len(layout.blocks) - k :] for n in block} if k else set()
    return set(layout.head) | top | (set(layout.above) if k else set())


class GradualUnfreezing:
    """ULMFiT-style schedule: the head alone for the first `every` epochs, then one more block
    from the top every `every` epochs, until everything trains. Parameters frozen before it
    started (a speech feature encoder) stay frozen. The optimizer must hold every parameter from
    the start: AdamW skips those without gradients and starts their state when they get one."""

    def __init__(self, model: torch.nn.Module, every: int = 1):
        if every < 1:
            raise SftError(f"finetune.every={every} must be at least 1 epoch")
        self.model, self.every = model, every
        self.layout = find_layout(model)
        self.keep_frozen = {n for n, p in model.named_parameters() if not p.requires_grad}

    def blocks_open(self, epoch: int) -> int:
        return min(len(self.layout.blocks), epoch // self.every)

    def apply(self, epoch: int) -> int:
        """Set `requires_grad` for `epoch` (from 0); returns how many blocks train."""
        k = self.blocks_open(epoch)
        trainable = _top(self.layout, k)
        for name, param in self.model.named_parameters():
            param.requires_grad = name in trainable and name not in self.keep_frozen
        return k


def start_gradual(model: torch.nn.Module, ft: FinetuneConfig) -> GradualUnfreezing | None:
    """For `finetune=gradual`, the schedule, with epoch 0's blocks frozen; else None. Call it
    once the model is prepared: DDP ignores for good the parameters frozen when it wraps them."""
    if ft.strategy != "gradual":
        return None
    unfreezer = GradualUnfreezing(inner_model(model), ft.every)
    unfreezer.apply(0)
    return unfreezer


def _matching(params: dict, patterns, key: str) -> set[str]:
    matched = set()
    for pattern in patterns:
        hits = {n for n in params if re.search(pattern, n)}  # a valid regex: validate checked
        if not hits:
            example = next(iter(params))
            raise SftError(
                f"{key} pattern '{pattern}' matches no parameter name (names look like "
                f"'{example}'); run with dry_run=true to list them"
            )
        matched |= hits
    return matched


def apply_lora(
    model: torch.nn.Module,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.1,
    target_modules: list[str] | None = None,
) -> torch.nn.Module:
    """Wrap `model` with peft LoRA adapters on the blocks' layers named `target_modules`
    (default: peft's choice for the architecture, e.g. query/value for BERT, else every linear
    and convolution layer in the blocks); the head trains in full and is saved with them."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_TARGETS
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers, weights transposed

    layout = find_layout(model)
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, Conv1D)
    block_modules = {
        name: module
        for name, module in model.named_modules()
        if name.startswith(layout.blocks_path + ".")
        and isinstance(module, kinds)
        and getattr(module, "groups", 1) == 1  # LoRA has no form for depthwise convolutions
    }
    found = {name.rsplit(".", 1)[-1] for name in block_modules}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    targets = list(target_modules or PEFT_TARGETS.get(model_type) or sorted(found))
    missing = [t for t in targets if t not in found]
    if missing:
        raise SftError(
            f"finetune.target_modules {missing} are not layers of {type(model).__name__}'s "
            f"blocks ({layout.blocks_path}); choose among {sorted(found)}"
        )
    head_modules = sorted({n.split(".")[0] for n in layout.head})
    chosen = {n: m for n, m in block_modules.items() if n.rsplit(".", 1)[-1] in targets}
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        # Full module names, so that only the blocks' layers get adapters (not a pooler's
        # "dense", nor a block's sub-layer that shares a name with its convolution).
        target_modules=[n for n in chosen],
        modules_to_save=head_modules,
        # transformers' Conv1D stores its weight as (in, out): peft must know to transpose
        fan_in_fan_out=any(isinstance(m, Conv1D) for m in chosen.values()),
    )
    return get_peft_model(model, config)


def choose_trainable(model: torch.nn.Module, ft: FinetuneConfig) -> torch.nn.Module:
    """Freeze (or wrap with LoRA) what `finetune.*` says; returns the model to train."""
    if ft.strategy == "lora":
        return apply_lora(model, ft.r, ft.alpha, ft.dropout, ft.target_modules)
    if ft.strategy == "gradual":
        # Everything stays trainable here, so that the optimizer holds every parameter;
        # GradualUnfreezing freezes once the model is prepared. Fail now if it has no blocks.
        find_layout(model)
    else:
        apply_strategy(model, ft.strategy, ft.k, ft.train, ft.freeze)
    return model


def train_mode(model: torch.nn.Module) -> None:
    """Training mode, except for modules whose parameters are all frozen: they run as in
    inference (no dropout, BatchNorm statistics fixed), so a frozen part stays exactly the
    pretrained function, as Keras does with `trainable=False`."""
    model.train()
    for module in model.modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            module.eval()


def save_model(model: torch.nn.Module, weights: dict, ft: FinetuneConfig, directory: Path) -> None:
    """The fine-tuned model as a Hugging Face directory. `weights`: its state dict, gathered by
    Accelerate. LoRA adapters are merged into a plain transformers model, unless
    `finetune.merge=false` keeps them apart: then the adapter is saved with, beside it, the model
    it adapts — config.json with our labels and model.safetensors (the pretrained body and the
    trained head; LoRA layers removed, not merged). transformers' `from_pretrained` and
    `pipeline()` load an adapter with config.json beside it onto the weights in the same
    directory, with the adapter in effect; without config.json they load
    `base_model_name_or_path`'s own config, which has neither our labels nor a head of our size."""
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        model.save_pretrained(directory, state_dict=weights, safe_serialization=True)
    elif ft.merge:  # a new module, made from `model`'s weights (whole: no sharding plugins)
        model.merge_and_unload().save_pretrained(directory, safe_serialization=True)
    else:
        model.save_pretrained(directory, state_dict=weights, safe_serialization=True)
        model.unload().save_pretrained(directory, safe_serialization=True)  # takes LoRA out


def inner_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (itself otherwise), whose parameter names
    match the checkpoint's."""
    from peft import PeftModel

    return model.base_model.model if isinstance(model, PeftModel) else model
