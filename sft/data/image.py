"""Image inputs: the checkpoint's image processor (PIL backend where torchvision is absent),
colour-mode conversion, and batched augmentation of train batches on tensors (kornia)."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from functools import partial
from typing import Any

import datasets
import torch
from PIL import Image, UnidentifiedImageError

from sft.data.inputs import Inputs, load_processor
from sft.data.splits import LABELS, Splits
from sft.errors import SftError


class ImageInputs(Inputs):
    """Decodes and processes images per batch; `augment` (train batches only) works on pixel
    tensors in [0, 1] after resizing and before normalisation."""

    def __init__(
        self,
        checkpoint: str,
        column: str,
        num_channels: int = 3,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        revision: str | None = None,
    ):
        self.column = column
        self.mode = "L" if num_channels == 1 else "RGB"
        self.augment = augment
        self.processor = load_image_processor(checkpoint, revision)

    def encode(self, splits: Splits) -> Splits:
        """Cast the column to `datasets.Image` and check that every image opens, so a corrupt or
        missing file fails now, by name, rather than halfway through an epoch."""
        return splits.map(self._check_split)

    def collator(self, train: bool) -> Callable[[list[dict]], dict[str, Any]]:
        return partial(self._collate, augment=self.augment if train else None)

    def train_randomness(self, ds: datasets.Dataset) -> str | None:
        return "image augmentation is on" if self.augment is not None else None

    def _check_split(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        ds = ds.cast_column(self.column, datasets.Image(decode=False))
        for row in ds.select_columns([self.column]):
            _open(row[self.column], split)
        return ds

    def _collate(self, examples: list[dict], augment) -> dict[str, Any]:
        images = [_open(e[self.column], "batch").convert(self.mode) for e in examples]
        labels = torch.tensor([e[LABELS] for e in examples])
        if augment is None:
            return {**self.processor(images, return_tensors="pt"), LABELS: labels}
        pixels = self.processor(images, return_tensors="pt", do_normalize=False)["pixel_values"]
        pixels = augment(pixels).clamp(0, 1)
        if getattr(self.processor, "do_normalize", False):
            mean = torch.tensor(self.processor.image_mean).view(1, -1, 1, 1)
            std = torch.tensor(self.processor.image_std).view(1, -1, 1, 1)
            pixels = (pixels - mean) / std
        return {"pixel_values": pixels, LABELS: labels}


def _open(value: dict | Image.Image, split: str) -> Image.Image:
    """A PIL image from a `datasets.Image(decode=False)` value ({"bytes", "path"})."""
    if isinstance(value, Image.Image):
        return value
    path, data = value.get("path"), value.get("bytes")
    try:
        if data is not None:
            image = Image.open(io.BytesIO(data))
        elif path is not None:
            image = Image.open(path)
        else:
            raise SftError(f"the {split} split has an empty image; drop that row")
        image.load()
    except FileNotFoundError as err:
        raise SftError(f"image file '{path}' ({split} split) does not exist; fix the path") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        name = path or "an embedded image"
        raise SftError(
            f"image '{name}' ({split} split) cannot be decoded ({err}); replace or remove the file"
        ) from err
    return image


def load_image_processor(checkpoint: str, revision: str | None = None):
    from transformers import AutoImageProcessor

    # Without torchvision (it does not install beside the CPU torch), use the PIL backend
    # explicitly rather than through a fallback warning on every load.
    backend = {} if importlib.util.find_spec("torchvision") else {"backend": "pil"}
    return load_processor(
        AutoImageProcessor,
        checkpoint,
        revision,
        "image processor",
        "preprocessor_config.json",
        **backend,
    )
