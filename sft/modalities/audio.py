"""Audio: decode WAV/FLAC/OGG with soundfile (libsndfile ships in its wheel, so no FFmpeg and no
torchcodec), mix to mono, resample with soxr to the feature extractor's rate, crop to `max_duration`
(and to a Whisper-style extractor's fixed window), augment train clips (audiomentations), then the
checkpoint's feature extractor. Batches are grouped by duration so little compute goes to padding.
Inputs to `predict` are audio files."""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from functools import partial
from typing import Any

import datasets
import numpy as np
import soundfile
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForAudioClassification

from sft.config import AugmentConfig, DataConfig
from sft.data.columns import column_values, iter_column
from sft.data.splits import LABELS, Splits
from sft.errors import SftError
from sft.modalities import Inputs, Preview, data_uri, load_processor

DURATION = "duration"  # seconds; added by `encode`, read by `lengths`


class AudioInputs(Inputs):
    def __init__(
        self,
        checkpoint: str,
        column: str,
        max_duration: float | None = None,
        augment: Callable[[np.ndarray, int], np.ndarray] | None = None,
        revision: str | None = None,
    ):
        self.column = column
        self.augment = augment
        self.processor = load_feature_extractor(checkpoint, revision)
        self.sampling_rate = int(self.processor.sampling_rate)
        self.padding = padding(self.processor)
        window = window_seconds(self.processor)
        if window is not None and (max_duration is None or max_duration > window):
            max_duration = window  # cropped like any long clip, not cut at the end by the extractor
        self.max_duration = max_duration

    def encode(self, splits: Splits) -> Splits:
        """Check that every clip's header reads and that it is not empty; record its duration.
        (Samples are decoded per batch: a clip broken past its header fails then, by name.)"""
        return splits.map(self._check_split)

    def collator(self, train: bool) -> Callable[[list[dict]], dict[str, Any]]:
        return partial(self._collate, train=train)

    def lengths(self, ds: datasets.Dataset) -> list[int] | None:
        """Milliseconds, cropped at max_duration; None where the extractor pads every clip to
        its whole window (Whisper): then all cost the same."""
        if self.padding == "max_length":
            return None
        seconds = np.asarray(column_values(ds, DURATION), dtype=np.float64)
        if self.max_duration is not None:
            seconds = np.minimum(seconds, self.max_duration)
        return (seconds * 1000).astype(np.int64).tolist()

    def train_randomness(self, ds: datasets.Dataset) -> str | None:
        if self.augment is not None:
            return "audio augmentation is on"
        if self.max_duration is None:
            return None
        if max(column_values(ds, DURATION), default=0) > self.max_duration:
            return f"clips longer than data.max_duration={self.max_duration} are cropped at random"
        return None

    def _check_split(self, ds: datasets.Dataset, split: str) -> datasets.Dataset:
        ds = ds.cast_column(self.column, datasets.Audio(decode=False))
        values = tqdm(iter_column(ds, self.column), total=len(ds), desc=f"scan {split} audio",
                      disable=None)  # fmt: skip
        # An array: datasets fingerprints a list argument element by element (splits.py)
        durations = np.array([_duration(value, split) for value in values], dtype=np.float64)
        return ds.add_column(DURATION, durations)

    def _collate(self, examples: list[dict], train: bool) -> dict[str, Any]:
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))  # torch's seeded RNG
        clips = []
        for example in examples:
            clip = load_audio(example[self.column], self.sampling_rate)
            clip = self._crop(clip, rng if train else None)
            if train and self.augment is not None:
                clip = self.augment(clip, self.sampling_rate)
            clips.append(clip)
        features = self.processor(
            clips,
            sampling_rate=self.sampling_rate,
            padding=self.padding,
            return_tensors="pt",
        )
        return {**features, LABELS: torch.tensor([e[LABELS] for e in examples])}

    def _crop(self, clip: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
        """At most `max_duration` seconds: a random window in training, the centre otherwise.
        (Shorter clips are padded by the feature extractor, batch by batch.)"""
        if self.max_duration is None:
            return clip
        keep = int(self.max_duration * self.sampling_rate)
        if len(clip) <= keep:
            return clip
        start = (
            int(rng.integers(0, len(clip) - keep + 1))
            if rng is not None
            else (len(clip) - keep) // 2
        )
        return clip[start : start + keep]


def padding(processor) -> str:
    """How a feature extractor pads a batch. Whisper-style extractors work on a fixed window
    (`n_samples`, 30 s) that the encoder requires whole; the rest pad to the longest clip."""
    return "max_length" if window_seconds(processor) else "longest"


def window_seconds(processor) -> float | None:
    """The fixed window of a Whisper-style extractor, in seconds (None for the others)."""
    samples = getattr(processor, "n_samples", None)
    return samples / processor.sampling_rate if samples else None


def load_audio(value: dict, sampling_rate: int) -> np.ndarray:
    """Mono float32 samples at `sampling_rate` from a `datasets.Audio(decode=False)` value."""
    import soxr

    samples, rate = _read(value, "batch")
    if samples.ndim == 2:
        samples = samples.mean(axis=1)  # channels -> mono
    if rate != sampling_rate:
        samples = soxr.resample(samples, rate, sampling_rate)
    return samples.astype(np.float32, copy=False)


def _source(value: dict, split: str) -> str | io.BytesIO:
    path, data = value.get("path"), value.get("bytes")
    if data is None and (path is None or not os.path.exists(path)):
        raise SftError(f"audio file '{path}' ({split} split) does not exist; fix the path")
    return io.BytesIO(data) if data is not None else path


def _soundfile(call, value: dict, split: str):
    """`call(source)` with soundfile, or an SftError naming the clip that cannot be decoded."""
    try:
        return call(_source(value, split))
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as err:
        raise SftError(
            f"audio '{value.get('path') or 'embedded bytes'}' ({split} split) cannot be decoded "
            f"({err}); use WAV, FLAC or OGG, or replace the file"
        ) from err


def _read(value: dict, split: str) -> tuple[np.ndarray, int]:
    return _soundfile(
        lambda source: soundfile.read(source, dtype="float32", always_2d=False), value, split
    )


def _duration(value: dict, split: str) -> float:
    """Seconds of audio, from the file's header: the up-front scan decodes no samples."""
    info = _soundfile(soundfile.info, value, split)
    if info.frames == 0:
        raise SftError(
            f"audio '{value.get('path') or 'embedded bytes'}' ({split} split) is empty (0 "
            f"samples); remove it"
        )
    return info.frames / info.samplerate


def load_feature_extractor(checkpoint: str, revision: str | None = None):
    from transformers import AutoFeatureExtractor

    return load_processor(
        AutoFeatureExtractor, checkpoint, revision, "feature extractor", "preprocessor_config.json"
    )


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


class AudioModality:
    name = "audio"
    task = "audio-classification"
    column_key = "audio_column"
    reads_files = True
    usage_example = '"clip.wav"'
    auto_class = AutoModelForAudioClassification

    def model_types(self) -> set[str]:
        from transformers.models.auto.modeling_auto import (
            MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES as NAMES,
        )

        return set(NAMES)

    def inputs(
        self, checkpoint: str, revision: str | None, data: DataConfig, augment: AugmentConfig
    ) -> AudioInputs:
        a = augment
        return AudioInputs(
            checkpoint,
            data.audio_column,
            data.max_duration,
            audio_augmenter(a.gain_db, a.noise_snr_db, a.shift, a.p),
            revision,
        )

    def load_processor(self, checkpoint: str, revision: str | None = None):
        return load_feature_extractor(checkpoint, revision)

    def pipeline_options(self, ref: str) -> dict[str, Any]:
        return {}

    def reader(self, classifier: Any) -> Callable[[str], Any]:
        # Decoded and resampled here: the pipeline resamples only through torchaudio.
        rate = int(classifier.feature_extractor.sampling_rate)
        return lambda path: {"raw": load_audio({"path": path}, rate), "sampling_rate": rate}

    def call_options(self) -> dict[str, Any]:
        return {}

    def sample(self, processor, n: int) -> dict[str, torch.Tensor]:
        rate = int(processor.sampling_rate)
        rng = np.random.default_rng(n)
        clips = [
            0.1 * rng.standard_normal(rate // 2 + 800 * i * n).astype(np.float32) for i in range(n)
        ]
        features = processor(
            clips, sampling_rate=rate, padding=padding(processor), return_tensors="pt"
        )
        return dict(features)

    def preview(self, value: Any, seconds: float = 5.0, rate: int = 16000) -> Preview:
        """The clip's first `seconds`, mono 16-bit WAV at `rate` Hz: speech stays clear, and
        fifty clips stay a few megabytes."""
        if isinstance(value, str):
            value = {"path": value, "bytes": None}
        samples = load_audio(value, rate)[: int(seconds * rate)]
        buffer = io.BytesIO()
        soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
        return Preview("audio", data_uri(buffer.getvalue(), "audio/wav"))


MODALITY = AudioModality()
