"""Images: the checkpoint's image processor (PIL backend where torchvision is absent),
colour-mode conversion, and batched augmentation of train batches on tensors (kornia: torchvision
does not install beside the CPU torch); inputs to `predict` are image files."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Callable
from functools import partial
from typing import Any

import datasets
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm
from transformers import AutoModelForImageClassification

from sft.config import AugmentConfig, DataConfig
from sft.data.columns import iter_column
from sft.data.splits import LABELS, Splits
from sft.errors import SftError
from sft.modalities import Inputs, Preview, data_uri, load_config, load_processor


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
        self.mode = colour_mode(num_channels)
        self.augment = augment
        self.processor = load_image_processor(checkpoint, revision)

    def encode(self, splits: Splits) -> Splits:
        """Cast the column to `datasets.Image` and read every image's header, so a missing file
        or one that is not an image fails now, by name, at ~30 us a file. Pixels are decoded
        per batch: damaged pixel data (a truncated file) stop the run there, by name."""
        return splits.map(self._check_split)

    def collator(self, train: bool) -> Callable[[list[dict]], dict[str, Any]]:
        return partial(self._collate, augment=self.augment if train else None)

    def train_randomness(self, ds: datasets.Dataset) -> str | None:
        return "image augmentation is on" if self.augment is not None else None

    def _check_split(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        ds = ds.cast_column(self.column, datasets.Image(decode=False))
        values = iter_column(ds, self.column)
        for value in tqdm(values, total=len(ds), desc=f"check {split} image headers", disable=None):
            open_image(value, f"{split} split", decode=False).close()
        return ds

    def _collate(self, examples: list[dict], augment) -> dict[str, Any]:
        images = [open_image(e[self.column], "in a batch").convert(self.mode) for e in examples]
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


def colour_mode(num_channels: int) -> str:
    """The PIL mode images are converted to for a model with `num_channels` input channels."""
    return "L" if num_channels == 1 else "RGB"


def open_image(value: dict | Image.Image, where: str, decode: bool = True) -> Image.Image:
    """A PIL image from a `datasets.Image(decode=False)` value ({"bytes", "path"}): decoded, or
    with only its header read (`decode=False`; close it). `where` it comes from names it in
    errors ("train split")."""
    if isinstance(value, Image.Image):
        return value
    path, data = value.get("path"), value.get("bytes")
    try:
        if data is not None:
            image = Image.open(io.BytesIO(data))
        elif path is not None:
            image = Image.open(path)
        else:
            raise SftError(f"an image ({where}) is empty; drop that row")
        if decode:
            image.load()
    except FileNotFoundError as err:
        raise SftError(f"image file '{path}' ({where}) does not exist; fix the path") from err
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        name = path or "an embedded image"
        raise SftError(
            f"image '{name}' ({where}) cannot be decoded ({err}); replace or remove the file"
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


def image_augmenter(
    zoom: float = 0.0, hflip: float = 0.0, shear: float = 0.0, color_jitter: float = 0.0
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function from a batch of images (N, C, H, W, values in [0, 1]) to an augmented batch of
    the same shape, or None when every knob is off. Randomness comes from torch's seeded RNG."""
    if not any((zoom, hflip, shear, color_jitter)):
        return None
    pipelines: dict[tuple[int, ...], torch.nn.Module] = {}

    def augment(pixels: torch.Tensor) -> torch.Tensor:
        shape = tuple(pixels.shape[1:])
        if shape not in pipelines:
            pipelines[shape] = _pipeline(shape, zoom, hflip, shear, color_jitter)
        return pipelines[shape](pixels)

    return augment


def _pipeline(shape: tuple[int, ...], zoom: float, hflip: float, shear: float, jitter: float):
    import kornia.augmentation as K

    channels, height, width = shape
    steps = []
    if zoom > 0:
        steps.append(K.RandomResizedCrop((height, width), scale=(1 - zoom, 1.0), p=1.0))
    if hflip > 0:
        steps.append(K.RandomHorizontalFlip(p=hflip))
    if shear > 0:
        steps.append(K.RandomAffine(degrees=0, shear=shear, p=1.0))
    if jitter > 0:
        # Saturation has no meaning for one channel: grey images vary brightness and contrast.
        saturation = jitter if channels == 3 else 0.0
        steps.append(K.ColorJitter(jitter, jitter, saturation, p=1.0))
    return torch.nn.Sequential(*steps)


def num_channels(checkpoint: str, revision: str | None = None) -> int:
    """Colour channels the checkpoint's vision model expects (3 unless its config says not)."""
    what = f"model.checkpoint '{checkpoint}'"
    config = load_config(checkpoint, revision, what, "use a hub id or a directory with config.json")
    return int(getattr(config, "num_channels", 3))


class ImageModality:
    name = "image"
    task = "image-classification"
    column_key = "image_column"
    reads_files = True
    usage_example = '"photo.jpg"'
    auto_class = AutoModelForImageClassification

    def model_types(self) -> set[str]:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES as NAMES,
        )

        return set(NAMES)

    def inputs(
        self, checkpoint: str, revision: str | None, data: DataConfig, augment: AugmentConfig
    ) -> ImageInputs:
        a = augment
        return ImageInputs(
            checkpoint,
            data.image_column,
            num_channels(checkpoint, revision),
            image_augmenter(a.zoom, a.hflip, a.shear, a.color_jitter),
            revision,
        )

    def load_processor(self, checkpoint: str, revision: str | None = None):
        return load_image_processor(checkpoint, revision)

    def pipeline_options(self, ref: str) -> dict[str, Any]:
        # The processor sft trains with (PIL backend), not the pipeline's torchvision default.
        return {"image_processor": load_image_processor(ref)}

    def reader(self, classifier: Any) -> Callable[[str], Any]:
        mode = colour_mode(getattr(classifier.model.config, "num_channels", 3))
        return lambda path: open_image({"path": path}, "input").convert(mode)

    def call_options(self) -> dict[str, Any]:
        return {}

    def sample(self, processor, n: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng(n)
        images = [
            Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)
        ]
        return dict(processor(images, return_tensors="pt"))

    def preview(self, value: Any, size: int = 160) -> Preview:
        """A PNG thumbnail, at most `size` pixels a side (the page scales small ones up)."""
        if isinstance(value, str):
            value = {"path": value, "bytes": None}
        image = open_image(value, "the report")
        image = image.convert("L" if image.mode in ("1", "L", "I;16", "I") else "RGB")
        image.thumbnail((size, size))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return Preview("image", data_uri(buffer.getvalue(), "image/png"))


MODALITY = ImageModality()
