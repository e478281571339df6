"""The model layer: a pretrained checkpoint with a fresh classification head for our labels."""

from __future__ import annotations

import logging

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
