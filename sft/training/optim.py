"""At which learning rate each parameter trains: parameter groups (per model part, decay or
not, layer-wise decay), the AdamW optimizer over them, the learning-rate schedule, and the
optimizer's state as a checkpoint holds it. Mirrors conf/optimizer and conf/scheduler."""

from __future__ import annotations

import logging
import math

import torch

from sft.config import OptimizerConfig, SchedulerConfig, TrainerConfig
from sft.errors import SftError
from sft.training.finetune import find_layout, layout_or_none

log = logging.getLogger(__name__)


def param_groups(
    model: torch.nn.Module,
    lr: float,
    weight_decay: float,
    head_lr: float | None = None,
    layer_decay: float = 1.0,
) -> list[dict]:
    """Optimizer groups for every parameter, frozen ones included (with `trainable: False`),
    one per model part and decay kind, each with its learning rate:
    - no weight decay on biases and norm scales (the 1-d parameters);
    - `head_lr` for the head (default `lr`);
    - `layer_decay` < 1: block i of n (from 0 at the bottom) gets lr * decay^(n - i), `below`
      gets lr * decay^(n + 1), `above` and the head keep their rate (as BEiT / ELECTRA do).
    """
    # A model without blocks (rare) forms one "body" group, unless a knob needs the structure:
    # then find_layout raises its clear error.
    needs_layout = layer_decay != 1.0 or head_lr is not None
    layout = find_layout(model) if needs_layout else layout_or_none(model)
    n = len(layout.blocks) if layout else 0
    groups: dict[tuple[str, bool], dict] = {}
    for name, param in model.named_parameters():
        part = layout.part_of(name) if layout else "body"
        if part == "head":
            rate = head_lr if head_lr is not None else lr
        elif part.startswith("block."):
            rate = lr * layer_decay ** (n - int(part.split(".")[1]))
        elif part == "below":
            rate = lr * layer_decay ** (n + 1)
        else:
            rate = lr
        decays = param.ndim >= 2
        key = (part, decays)
        group = groups.setdefault(
            key,
            {
                "name": f"{part}{'' if decays else '.no_decay'}",
                "params": [],
                "names": [],
                "lr": rate,
                "weight_decay": weight_decay if decays else 0.0,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def describe(groups: list[dict]) -> dict:
    """The JSON-ready summary of `param_groups`: per group its parameter names, counts, lr and
    weight decay, trainable or frozen, plus totals."""
    rows = []
    for group in groups:
        for trainable in (True, False):
            pairs = [
                (n, p)
                for n, p in zip(group["names"], group["params"], strict=True)
                if p.requires_grad == trainable
            ]
            if pairs:
                rows.append(
                    {
                        "name": group["name"],
                        "trainable": trainable,
                        "num_params": sum(p.numel() for _, p in pairs),
                        "lr": group["lr"] if trainable else 0.0,
                        "weight_decay": group["weight_decay"] if trainable else 0.0,
                        "params": [n for n, _ in pairs],
                    }
                )
    trainable = sum(r["num_params"] for r in rows if r["trainable"])
    total = sum(r["num_params"] for r in rows)
    return {
        "groups": rows,
        "trainable_params": trainable,
        "frozen_params": total - trainable,
        "total_params": total,
    }


def format_table(summary: dict) -> str:
    """A plain-text table of `describe`'s groups, for the log and `dry_run=true`."""
    lines = [f"{'group':<22} {'params':>12} {'state':<9} {'lr':>10} {'wd':>6}"]
    for row in summary["groups"]:
        state = "train" if row["trainable"] else "frozen"
        lr = f"{row['lr']:.2e}" if row["trainable"] else "-"
        wd = f"{row['weight_decay']:g}" if row["trainable"] else "-"
        lines.append(f"{row['name']:<22} {row['num_params']:>12,} {state:<9} {lr:>10} {wd:>6}")
    share = summary["trainable_params"] / max(summary["total_params"], 1)
    lines.append(
        f"trainable {summary['trainable_params']:,} of {summary['total_params']:,} "
        f"parameters ({share:.1%}); frozen {summary['frozen_params']:,}"
    )
    return "\n".join(lines)


def make_optimizer(groups: list[dict], settings: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of `groups`, each group at its own lr and decay."""
    if settings.name.lower() != "adamw":
        raise SftError(f"optimizer.name={settings.name} is not supported; use adamw")
    trainable = [
        {"params": params, "lr": g["lr"], "weight_decay": g["weight_decay"]}
        for g in groups
        if (params := [p for p in g["params"] if p.requires_grad])
    ]
    return torch.optim.AdamW(
        trainable,
        lr=settings.lr,
        betas=tuple(settings.betas),
        eps=settings.eps,
        fused=settings.fused,
    )


def schedule(
    settings: SchedulerConfig,
    trainer: TrainerConfig,
    optimizer,
    batches_per_epoch: int,
    accelerator,
):
    """How many optimizer steps to take, and the learning-rate scheduler over them; logs the
    plan, global batch included."""
    t = trainer
    steps_per_epoch = math.ceil(batches_per_epoch / t.grad_accum_steps)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    processes = accelerator.num_processes
    log.info(
        "training %d steps (%.1f epochs): batch %d per process x %d processes x %d accumulation "
        "= %d examples per step; precision %s on %s",
        total_steps,
        total_steps / steps_per_epoch,
        t.batch_size,
        processes,
        t.grad_accum_steps,
        t.batch_size * processes * t.grad_accum_steps,
        accelerator.mixed_precision,
        accelerator.device,
    )
    return total_steps, make_scheduler(settings, optimizer, total_steps)


def make_scheduler(settings: SchedulerConfig, optimizer: torch.optim.Optimizer, total_steps: int):
    """The learning-rate schedule over `total_steps` optimizer steps. Not handed to
    Accelerate's `prepare`: the loop steps it once per optimizer step, on every process alike."""
    from transformers import get_scheduler

    return get_scheduler(
        settings.name,
        optimizer,
        num_warmup_steps=round(settings.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )


def saved_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """The optimizer's state as contiguous tensors named `<param index>.<name>` (for
    safetensors) plus JSON for the rest (param_groups, any non-tensor state)."""
    state_dict = optimizer.state_dict()
    tensors, other = {}, {}
    for index, per_param in state_dict["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().contiguous()
            else:
                other.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def restore_state(optimizer: torch.optim.Optimizer, tensors: dict, plain: dict) -> None:
    """The inverse of `saved_state`: parameter indices are ints again, `load_state_dict` moves
    the tensors to their parameters' device, and each tensor shaped as its parameter (AdamW's
    moments) goes back into that parameter's memory layout. `load_state_dict` keeps the
    contiguous layout it is given, and torch's fused AdamW walks a channels-last filter and a
    contiguous moment in storage order alike, raising nothing: a 3x3 filter came out 1.7e-3
    off after one step."""
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in plain["state"].items():
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": plain["param_groups"]})
    for param, per_param in optimizer.state.items():
        for name, value in per_param.items():
            moment = torch.is_tensor(value) and value.shape == param.shape
            if moment and value.stride() != param.stride():
                per_param[name] = torch.empty_like(param, dtype=value.dtype).copy_(value)
