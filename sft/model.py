"""The model layer: a pretrained checkpoint with a fresh classification head for our labels, and
the fine-tuned models that predict, evaluate and export find in run directories (`resolve`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from transformers import (
    AutoConfig,
    AutoModelForAudioClassification,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    PreTrainedModel,
)

from sft.errors import SftError

log = logging.getLogger(__name__)

# Which Auto class builds a classifier for each task (the names `pipeline()` uses).
AUTO_CLASSES = {
    "text-classification": AutoModelForSequenceClassification,
    "image-classification": AutoModelForImageClassification,
    "audio-classification": AutoModelForAudioClassification,
}


def load_classifier(
    checkpoint: str,
    labels: list[str],
    task: str = "text-classification",
    revision: str | None = None,
    freeze_feature_encoder: bool = False,
) -> PreTrainedModel:
    """Load `checkpoint` with a classification head sized and named for `labels`.

    A head trained for other labels (a different size) is replaced, not an error: replacing the
    head is what fine-tuning a pretrained checkpoint for a new label set means.
    `freeze_feature_encoder` keeps a speech model's convolutional front end fixed.
    """
    if task not in AUTO_CLASSES:
        raise SftError(f"task '{task}' is not supported; choose one of {sorted(AUTO_CLASSES)}")
    try:
        model = AUTO_CLASSES[task].from_pretrained(
            checkpoint,
            revision=revision,
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={name: i for i, name in enumerate(labels)},
            ignore_mismatched_sizes=True,
        )
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise SftError(
            f"model.checkpoint '{checkpoint}' could not be loaded ({type(err).__name__}: "
            f"{first_line}); use a hub id or a directory with config.json and model weights"
        ) from err
    if freeze_feature_encoder:
        if not hasattr(model, "freeze_feature_encoder"):
            raise SftError(
                f"model.freeze_feature_encoder=true, but {type(model).__name__} has no "
                f"convolutional feature encoder; set it to false"
            )
        model.freeze_feature_encoder()
    return model


def num_channels(checkpoint: str, revision: str | None = None) -> int:
    """Colour channels the checkpoint's vision model expects (3 unless its config says not)."""
    try:
        config = AutoConfig.from_pretrained(checkpoint, revision=revision)
    except Exception as err:
        raise SftError(
            f"model.checkpoint '{checkpoint}' has no loadable config ({type(err).__name__}); use "
            f"a hub id or a directory with config.json"
        ) from err
    return int(getattr(config, "num_channels", 3))


@dataclass
class TrainedModel:
    """A fine-tuned classifier to use: where it is, its task, the input column it was trained on."""

    ref: str  # a local directory or a hub id
    task: str  # text-classification | image-classification | audio-classification
    column: str | None = None  # the input column of the run that trained it

    @property
    def modality(self) -> str:
        return self.task.split("-")[0]


def resolve(source: str) -> TrainedModel:
    """The model behind a run directory, a model directory or a hub id, and its task."""
    path = Path(source)
    if (path / "model").is_dir() and (path / "config.yaml").is_file():
        from omegaconf import OmegaConf

        config = OmegaConf.load(path / "config.yaml")
        modality = config.task.split("-")[0]
        column = OmegaConf.select(config, f"data.{modality}_column", default=None)
        return TrainedModel(str(path / "model"), config.task, column)
    if path.exists() and not (path / "config.json").is_file():
        raise SftError(
            f"{source} is neither a run directory (with model/ and config.yaml) nor a model "
            f"directory (with config.json)"
        )
    return TrainedModel(str(path) if path.exists() else source, detect_task(source))


def detect_task(ref: str) -> str:
    """The pipeline task of a checkpoint, from its model type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES,
        MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES,
    )

    try:
        config = AutoConfig.from_pretrained(ref)
    except Exception as err:
        raise SftError(
            f"cannot load a model config from '{ref}' ({type(err).__name__}); pass a run "
            f"directory, a model directory or a hub id"
        ) from err
    if config.model_type in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        return "image-classification"
    if config.model_type in MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES:
        return "audio-classification"
    return "text-classification"
