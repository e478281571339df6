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
from transformers import AutoConfig, PreTrainedModel

from sft import modalities
from sft.dropout import use_fast_dropout
from sft.errors import SftError, from_checkpoint
from sft.modalities import Modality
from sft.run_dir import RunDir

log = logging.getLogger(__name__)


def check_checkpoint(
    checkpoint: str, revision: str | None, task: str, max_length: int | None = None
) -> None:
    """Fail first, naming the checkpoint, when its config cannot be read, its model type has
    no classifier for `task`, or a text model has fewer positions than `max_length` tokens —
    before its tokenizer or processor is looked for, which would take the blame otherwise, and
    before training, which would crash at the first text that long."""
    # A path no hub id can be ('/x', './x', 'a/b/c'): say it is missing, not that it is a bad
    # repo id, which is what the hub client would answer.
    path_like = Path(checkpoint).is_absolute() or checkpoint.startswith(".")
    if (path_like or checkpoint.count("/") > 1) and not Path(checkpoint).exists():
        raise SftError(
            f"model.checkpoint '{checkpoint}' does not exist; give a directory with config.json "
            f"and the model weights, or a hub id (user/name)"
        )
    config = from_checkpoint(
        lambda: AutoConfig.from_pretrained(checkpoint, revision=revision),
        f"model.checkpoint '{checkpoint}' could not be loaded",
        "use a hub id or a directory with config.json, the model weights and the tokenizer or "
        "processor files",
    )
    model_type = getattr(config, "model_type", None)
    claimed = modalities.task_of(model_type)
    if claimed != task and model_type not in modalities.get(task).model_types():
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
    task: str = modalities.TEXT,
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
    auto_class = modalities.get(task).auto_class
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
        _start_head_bias(model, loading, head_bias)
    if pad_token_id is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = pad_token_id
    if freeze_feature_encoder:
        if not hasattr(model, "freeze_feature_encoder"):
            raise SftError(
                f"model.freeze_feature_encoder=true, but {type(model).__name__} has no "
                f"convolutional feature encoder; set it to false"
            )
        model.freeze_feature_encoder()
    return use_fast_dropout(head_in_fp32(model))


def head_in_fp32(model: torch.nn.Module) -> torch.nn.Module:
    """`model`, its output layer computing in fp32 under autocast (bf16 everywhere else). The
    logits feed losses, thresholds and scores, and a regression head with the target scale
    folded in (sft.problems) outputs values such as years, which bf16 rounds to multiples of 8.
    The layer is a sliver of the work. A copy of the layer (peft's trained head) keeps it."""
    layers = _output_layers(model, model.config.num_labels)
    if layers:
        layers[-1].forward = types.MethodType(_fp32_linear, layers[-1])
    return model


def _fp32_linear(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    bias = None if self.bias is None else self.bias.float()
    with torch.autocast(x.device.type, enabled=False):
        return torch.nn.functional.linear(x.float(), self.weight.float(), bias)


def _start_head_bias(model: PreTrainedModel, loading: dict, bias: np.ndarray) -> None:
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
    task: str  # a pipeline task name: a key of sft.modalities.TASKS
    column: str | None = None  # the input column of the run that trained it
    run: RunDir | None = None  # the run directory it was found in, if any

    @property
    def modality(self) -> Modality:
        return modalities.get(self.task)

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
        key = modalities.get(config.task).column_key
        column = OmegaConf.select(config, f"data.{key}", default=None)
        return TrainedModel(str(run.model), config.task, column, run)
    if path.exists() and not (path / "config.json").is_file():
        raise SftError(
            f"{source} is neither a run directory (with model/ and config.yaml) nor a model "
            f"directory (with config.json)"
        )
    return TrainedModel(str(path) if path.exists() else source, detect_task(source))


def detect_task(ref: str) -> str:
    """The pipeline task of a checkpoint, from its model type."""
    config = from_checkpoint(
        lambda: AutoConfig.from_pretrained(ref),
        f"cannot load a model config from '{ref}'",
        "pass a run directory, a model directory or a hub id",
    )
    return modalities.task_of(config.model_type)


def output_layer(model: torch.nn.Module, outputs: int, otherwise: str) -> torch.nn.Linear:
    """The linear layer whose outputs are `model`'s logits: the last one registered with
    `outputs` features and a bias (in a peft model, the trained copy of the head). `otherwise`:
    the setting that avoids needing one, named in the error."""
    found = _output_layers(model, outputs)
    if not found:
        raise SftError(
            f"{type(model).__name__} has no linear output layer of {outputs} features with a "
            f"bias to fold the target scale into; set {otherwise}"
        )
    return found[-1]


def _output_layers(model: torch.nn.Module, outputs: int) -> list[torch.nn.Linear]:
    return [
        m
        for m in model.modules()
        if isinstance(m, torch.nn.Linear) and m.out_features == outputs and m.bias is not None
    ]
