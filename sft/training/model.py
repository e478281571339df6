"""The model layer: a pretrained checkpoint with a fresh classification head for our labels, and
the fine-tuned models that predict, evaluate and export find in run directories (`resolve`)."""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from transformers import PreTrainedModel

from sft import modalities
from sft.errors import SftError, from_checkpoint
from sft.modalities import Modality
from sft.problems.head import head_in_fp32, start_head_bias
from sft.runs.directory import RunDir
from sft.training.dropout import use_fast_dropout

log = logging.getLogger(__name__)


def check_checkpoint(
    checkpoint: str, revision: str | None, modality: Modality, max_length: int | None = None
) -> None:
    """Fail first, naming the checkpoint, when its config cannot be read, its model type has
    no classifier of `modality`, or a text model has fewer positions than `max_length` tokens —
    before its tokenizer or processor is looked for, which would take the blame otherwise, and
    before training, which would crash at the first text that long."""
    if _path_like(checkpoint) and not Path(checkpoint).exists():
        raise SftError(
            f"model.checkpoint '{checkpoint}' does not exist; give a directory with config.json "
            f"and the model weights, or a hub id (user/name)"
        )
    config = modalities.load_config(
        checkpoint,
        revision,
        f"model.checkpoint '{checkpoint}'",
        "use a hub id or a directory with config.json, the model weights and the tokenizer or "
        "processor files",
    )
    model_type = getattr(config, "model_type", None)
    claimed, task = modalities.task_of(model_type), modality.task
    if claimed != task and model_type not in modality.model_types():
        raise SftError(
            f"model.checkpoint '{checkpoint}' is a {model_type} model, which classifies for "
            f"{claimed}, but task={task}; set task={claimed}, or choose a {task} checkpoint"
        )
    # Models with relative positions only (DeBERTa-v2/v3) take any length.
    positions = getattr(config, "max_position_embeddings", None)
    absolute = getattr(config, "position_biased_input", True)
    if task == modalities.TEXT and max_length and positions and absolute and max_length > positions:
        raise SftError(
            f"data.max_length={max_length} is more than model.checkpoint '{checkpoint}' takes: "
            f"its max_position_embeddings is {positions}; set data.max_length={positions} or less"
        )


def load_classifier(
    checkpoint: str,
    labels: list[str],
    modality: Modality | None = None,
    revision: str | None = None,
    freeze_feature_encoder: bool = False,
    pad_token_id: int | None = None,
    problem_type: str | None = None,
    head_bias: np.ndarray | None = None,
) -> PreTrainedModel:
    """Load `checkpoint` with a classification head sized and named for `labels`.

    A head trained for other labels (a different size) is replaced, not an error: replacing the
    head is what fine-tuning a pretrained checkpoint for a new label set means.
    `freeze_feature_encoder` keeps a speech model's convolutional front end fixed;
    `pad_token_id` is the tokenizer's, for checkpoints whose config has none (GPT-style).
    `problem_type` (transformers' name, see sft/problems/) is saved in the config: pipelines
    score by it (softmax, sigmoid, or the raw value; None: transformers decides, softmax over
    more than one label). `head_bias`: where a new head's output
    bias starts (`Problem.head_bias`); a head the checkpoint holds for these labels keeps its own.
    """
    auto_class = (modality or modalities.get(modalities.TEXT)).auto_class
    model, loading = from_checkpoint(
        lambda: auto_class.from_pretrained(
            checkpoint,
            revision=revision,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            problem_type=problem_type,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        ),
        f"model.checkpoint '{checkpoint}' could not be loaded",
        "use a hub id or a directory with config.json and model weights",
    )
    if head_bias is not None:
        start_head_bias(model, loading, head_bias)
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    if freeze_feature_encoder:
        if not hasattr(model, "freeze_feature_encoder"):
            raise SftError(
                f"model.freeze_feature_encoder=true, but {type(model).__name__} has no "
                f"convolutional feature encoder; set it to false"
            )
        model.freeze_feature_encoder()
    fast_convolutions(model)
    return use_fast_dropout(head_in_fp32(model))


def fast_convolutions(model: torch.nn.Module) -> None:
    """A network of 2D convolutions (more than one: not ViT's patch embedding alone) with its
    filters in channels-last, the layout oneDNN's convolutions run fastest in (and cuDNN's on
    tensor cores). Its depthwise convolutions compute in fp32 as they train under CPU bf16
    autocast (`_depthwise_in_fp32`). EfficientNet-Lite0's training step 1.45x faster in bf16,
    1.33x in fp32, its bf16 forward 1.4x. Saved weights and checkpoints stay contiguous; a
    resume puts the optimizer's state back into its parameters' layout (`optim.restore_state`).
    BENCHMARKS.md has the figures."""
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if len(convolutions) <= 1:
        return
    model.to(memory_format=torch.channels_last)
    for conv in convolutions:
        depthwise = conv.groups > 1 and conv.groups == conv.in_channels
        if depthwise and type(conv).forward is torch.nn.Conv2d.forward:  # not a forward of its own
            conv.forward = types.MethodType(_depthwise_in_fp32, conv)


def _depthwise_in_fp32(self: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """A depthwise convolution that will be backpropagated, in fp32 under CPU bf16 autocast.
    oneDNN has no fast bf16 kernel for its backward pass: one 5x5 depthwise layer of
    EfficientNet-Lite0 took 140 ms in bf16 against 39 ms in fp32. Its whole bf16 training step
    takes 1,534 ms so (2,219 as torch builds it; channels-last alone gained nothing), now
    faster than fp32's 1,958. Without gradients the casts cost more than they save (the
    forward 285 -> 362 ms), and elsewhere (fp32, GPUs) nothing is slow: there it is the plain
    convolution."""
    on_cpu = x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    cpu_bf16 = on_cpu and torch.get_autocast_dtype("cpu") == torch.bfloat16
    backward = torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)
    if not (cpu_bf16 and backward):
        return torch.nn.Conv2d.forward(self, x)
    bias = None if self.bias is None else self.bias.float()
    with torch.autocast("cpu", enabled=False):
        return self._conv_forward(x.float(), self.weight.float(), bias)


def enable_gradient_checkpointing(model: PreTrainedModel) -> None:
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise SftError(
            f"{type(model).__name__} does not support gradient checkpointing; set "
            f"trainer.gradient_checkpointing=false"
        )
    # Reentrant checkpointing drops the gradients of a block whose inputs do not require grad
    # (above frozen layers); transformers patches that by making the embedding outputs require
    # grad, which backpropagates through every frozen layer. Non-reentrant needs neither.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


@dataclass
class TrainedModel:
    """A fine-tuned classifier to use: where it is, its task, the input column it was trained on."""

    ref: str  # a local directory or a hub id
    modality: Modality
    column: str | None = None  # the input column of the run that trained it
    run: RunDir | None = None  # the run directory it was found in, if any

    @property
    def task(self) -> str:
        """Its pipeline task name (a key of sft.modalities.TASKS)."""
        return self.modality.task

    def load(self) -> PreTrainedModel:
        return head_in_fp32(self.modality.auto_class.from_pretrained(self.ref))

    def load_processor(self):
        return self.modality.load_processor(self.ref)


def resolve(source: str) -> TrainedModel:
    """The model behind a run directory, a model directory or a hub id, and its task."""
    path = Path(source)
    run = RunDir(path)
    if run.holds_model():
        config = run.read_config()
        modality = modalities.get(config.task)
        column = OmegaConf.select(config, f"data.{modality.column_key}", default=None)
        return TrainedModel(str(run.model), modality, column, run)
    if not path.exists() and _path_like(source):
        raise SftError(
            f"{source} does not exist; give a run directory, a model directory or a hub id"
        )
    if path.exists() and not (path / "config.json").is_file():
        raise SftError(
            f"{source} is neither a run directory (with model/ and config.yaml) nor a model "
            f"directory (with config.json)"
        )
    ref = str(path) if path.exists() else source
    return TrainedModel(ref, modalities.get(detect_task(source)))


def detect_task(ref: str) -> str:
    """The pipeline task of a checkpoint, from its model type."""
    config = modalities.load_config(
        ref, None, f"the model '{ref}'", "pass a run directory, a model directory or a hub id"
    )
    return modalities.task_of(config.model_type)


def _path_like(ref: str) -> bool:
    """A path no hub id can be ('/x', './x', '~/x', 'a/b/c'): missing, it is said to be missing,
    not a malformed repo id, which is what the hub client would answer."""
    return ref.startswith(("/", ".", "~")) or ref.count("/") > 1
