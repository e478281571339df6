"""The seam between data and modality: how raw examples of one kind become model inputs.

The loop, metrics and outputs see only batches of tensors; each modality (text today, images
and speech next) implements `Inputs` in its own module of `sft/data/`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import datasets
import torch

from sft.data.splits import Splits
from sft.errors import SftError


class Inputs(Protocol):
    column: str  # the raw input column: text, image or audio
    processor: Any  # tokenizer, image processor or feature extractor; saved beside the model

    def encode(self, splits: Splits) -> Splits:
        """One-off preprocessing of every split (tokenization, decoding checks)."""
        ...

    def collator(self, train: bool) -> Callable[[list[dict]], dict[str, Any]]:
        """Turns a list of examples into a batch; `train=True` may add augmentation."""
        ...

    def sampler(
        self, ds: datasets.Dataset, batch_size: int, generator: torch.Generator
    ) -> torch.utils.data.Sampler | None:
        """The train sampler, when the modality wants its own (speech groups by duration);
        None means plain shuffling."""
        return None

    def train_randomness(self, ds: datasets.Dataset) -> str | None:
        """Why a train example can reach the model differently from epoch to epoch
        (augmentation, random crops), or None when it cannot."""
        return None


def load_processor(auto_class, checkpoint: str, revision: str | None, what: str, file: str, **kw):
    """`auto_class.from_pretrained(checkpoint)`, or an SftError naming the checkpoint, the
    missing piece (`what`) and the file a local directory needs for it."""
    try:
        return auto_class.from_pretrained(checkpoint, revision=revision, **kw)
    except Exception as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise SftError(
            f"model.checkpoint '{checkpoint}' has no loadable {what} ({type(err).__name__}: "
            f"{detail}); point it at a hub id or a directory with {file}"
        ) from err


def processor_for(task: str, checkpoint: str, revision: str | None = None):
    """The tokenizer, image processor or feature extractor of `checkpoint`, by `task`, loaded as
    training loads it."""
    if task == "image-classification":
        from sft.data.image import load_image_processor

        return load_image_processor(checkpoint, revision)
    if task == "audio-classification":
        from sft.data.audio import load_feature_extractor

        return load_feature_extractor(checkpoint, revision)
    from sft.data.text import load_tokenizer

    return load_tokenizer(checkpoint, revision)
