"""Train-time augmentation, built from plain numbers by well-kept libraries: kornia for images
(batched, on tensors; torchvision does not install beside the CPU torch) and audiomentations
for speech (per clip, on waveforms)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
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


def audio_augmenter(
    gain_db: float = 0.0,
    noise_snr_db: list[float] | tuple[float, float] | None = None,
    shift: float = 0.0,
    p: float = 0.5,
) -> Callable[[np.ndarray, int], np.ndarray] | None:
    """A function (samples, sampling_rate) -> augmented samples of the same length, or None
    when every knob is off. Randomness comes from numpy's and Python's seeded RNGs."""
    if not (gain_db or noise_snr_db or shift):
        return None
    import audiomentations as A

    steps = []
    if gain_db > 0:
        steps.append(A.Gain(min_gain_db=-gain_db, max_gain_db=gain_db, p=p))
    if noise_snr_db:
        low, high = noise_snr_db
        steps.append(A.AddGaussianSNR(min_snr_db=low, max_snr_db=high, p=p))
    if shift > 0:
        steps.append(A.Shift(min_shift=-shift, max_shift=shift, p=p))
    pipeline = A.Compose(steps)

    def augment(samples: np.ndarray, sampling_rate: int) -> np.ndarray:
        return pipeline(samples=samples, sample_rate=sampling_rate)

    return augment
