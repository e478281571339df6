"""Train-time augmentation, built from plain numbers by a well-kept library: kornia for images
(batched, on tensors; torchvision does not install beside the CPU torch)."""

from __future__ import annotations

from collections.abc import Callable

import torch


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
