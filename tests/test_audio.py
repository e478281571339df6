"""Speech on the same loop: a tiny wav2vec2 built from a config, audiofolders written here (WAV
and FLAC at 8, 16 and 44.1 kHz, mono and stereo), cropping, duration grouping, augmentation,
bad audio."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch

from sft.config import DataConfig, TrainerConfig
from sft.data import build_splits, load_raw
from sft.data.loaders import loaders
from sft.errors import SftError
from sft.modalities.audio import DURATION, AudioInputs, audio_augmenter, load_audio
from sft.modalities.audio import MODALITY as AUDIO
from sft.prepare import tiny_model
from sft.problems import PROBLEMS
from tests.conftest import assert_run_outputs, run_cli

TONES = {"low": 220.0, "mid": 660.0, "high": 1760.0}  # a learnable signal: the pitch
FORMATS = [(".wav", 16000, 1), (".flac", 8000, 1), (".wav", 44100, 2), (".flac", 16000, 2)]


def write_clip(path, freq: float, rate: int, channels: int, seconds: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t) + 0.02 * rng.standard_normal(len(t))
    samples = np.stack([wave] * channels, axis=1) if channels == 2 else wave
    soundfile.write(path, samples.astype(np.float32), rate)


def audio_tree(root, per_class: int, seed: int = 0):
    for c, (name, freq) in enumerate(TONES.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix, rate, channels = FORMATS[i % len(FORMATS)]
            seconds = 0.3 + 0.1 * (i % 5)  # 0.3..0.7 s: durations differ
            write_clip(
                root / name / f"{i}{suffix}", freq, rate, channels, seconds, seed + 50 * c + i
            )
    return root


@pytest.fixture(scope="session")
def tiny_wav2vec2(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_model("wav2vec2", tmp_path_factory.mktemp("w2v"))


@pytest.fixture
def audiofolder(tmp_path):
    root = tmp_path / "audio"
    audio_tree(root / "train", per_class=12, seed=0)
    audio_tree(root / "test", per_class=4, seed=1000)
    return root


def encoded_splits(root, checkpoint, **kwargs):
    raw = load_raw(str(root), input_column="audio", input_is_path=True)
    splits = build_splits(
        raw,
        source=str(root),
        input_column="audio",
        label_column="label",
        problem=PROBLEMS["single_label"],
    )
    inputs = AudioInputs(str(checkpoint), "audio", **kwargs)
    return inputs.encode(splits), inputs


@pytest.mark.parametrize(("suffix", "rate", "channels"), FORMATS)
def test_any_rate_and_channel_count_decodes_to_mono_at_the_model_rate(
    tmp_path, suffix, rate, channels
):
    path = tmp_path / f"clip{suffix}"
    write_clip(path, 440.0, rate, channels, seconds=0.5, seed=0)
    samples = load_audio({"path": str(path), "bytes": None}, 16000)
    assert samples.ndim == 1 and samples.dtype == np.float32
    assert len(samples) == pytest.approx(8000, abs=2)
    # Still a 440 Hz tone after mixing and resampling: the spectrum peaks there.
    spectrum = np.abs(np.fft.rfft(samples))
    assert np.fft.rfftfreq(len(samples), 1 / 16000)[spectrum.argmax()] == pytest.approx(440, abs=4)


def test_encode_records_durations(audiofolder, tiny_wav2vec2):
    encoded, _ = encoded_splits(audiofolder, tiny_wav2vec2)
    durations = sorted(set(np.round(encoded.test[DURATION], 3)))
    assert durations == [0.3, 0.4, 0.5, 0.6]


def test_max_duration_crops_randomly_in_training_and_centrally_in_evaluation(
    audiofolder, tiny_wav2vec2
):
    encoded, inputs = encoded_splits(audiofolder, tiny_wav2vec2, max_duration=0.25)
    examples = [encoded.train[i] for i in range(4)]
    torch.manual_seed(0)
    train_a = inputs.collator(train=True)(examples)["input_values"]
    train_b = inputs.collator(train=True)(examples)["input_values"]
    eval_a = inputs.collator(train=False)(examples)["input_values"]
    eval_b = inputs.collator(train=False)(examples)["input_values"]
    assert train_a.shape[1] == eval_a.shape[1] == 4000  # 0.25 s at 16 kHz
    assert not torch.equal(train_a, train_b)
    assert torch.equal(eval_a, eval_b)
    assert set(inputs.lengths(encoded.train)) == {250}  # grouped by the length trained on


def test_short_clips_are_padded_with_an_attention_mask(audiofolder, tiny_wav2vec2):
    encoded, inputs = encoded_splits(audiofolder, tiny_wav2vec2, max_duration=2.0)
    examples = [encoded.test[i] for i in range(4)]
    batch = inputs.collator(train=False)(examples)
    lengths = [round(e[DURATION] * 16000) for e in examples]
    assert batch["input_values"].shape[1] == max(lengths)
    assert batch["attention_mask"].sum(1).tolist() == pytest.approx(lengths, abs=2)


def test_train_batches_are_grouped_by_duration(audiofolder, tiny_wav2vec2):
    encoded, inputs = encoded_splits(audiofolder, tiny_wav2vec2)
    drawn = loaders(encoded, inputs, DataConfig(), TrainerConfig(batch_size=4), seed=0)
    order = list(drawn.train.sampler)
    assert sorted(order) == list(range(len(encoded.train)))
    durations = np.array(encoded.train[DURATION])[order]
    spread_grouped = np.mean([np.ptp(durations[i : i + 4]) for i in range(0, len(order), 4)])
    shuffled = np.random.default_rng(0).permutation(durations)
    spread_random = np.mean([np.ptp(shuffled[i : i + 4]) for i in range(0, len(order), 4)])
    assert spread_grouped < spread_random


def test_augmentation_changes_train_batches_and_never_eval_batches(audiofolder, tiny_wav2vec2):
    augment = audio_augmenter(gain_db=6, noise_snr_db=[10, 20], shift=0.2, p=1.0)
    encoded, inputs = encoded_splits(audiofolder, tiny_wav2vec2, augment=augment)
    plain = AudioInputs(str(tiny_wav2vec2), "audio")
    examples = [encoded.train[i] for i in range(4)]
    np.random.seed(0)
    train = inputs.collator(train=True)(examples)["input_values"]
    evaluation = inputs.collator(train=False)(examples)["input_values"]
    assert not torch.equal(train, evaluation)
    assert torch.equal(evaluation, plain.collator(train=False)(examples)["input_values"])


def test_augmenter_is_off_when_every_knob_is_zero():
    assert audio_augmenter() is None


def test_zero_length_audio_is_named(audiofolder, tiny_wav2vec2):
    empty = audiofolder / "train" / "low" / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(SftError, match=r"empty\.wav.*is empty"):
        encoded_splits(audiofolder, tiny_wav2vec2)


def test_unreadable_audio_is_named(audiofolder, tiny_wav2vec2):
    (audiofolder / "train" / "mid" / "noise.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(SftError, match=r"noise\.wav.*cannot be decoded"):
        encoded_splits(audiofolder, tiny_wav2vec2)


def test_manifest_with_missing_audio_file_is_named(tmp_path, tiny_wav2vec2):
    audio_tree(tmp_path / "clips", per_class=3)
    rows = [{"audio": f"clips/{t}/{i}.wav", "label": t} for t in TONES for i in (0, 2)]
    rows.append({"audio": "clips/low/gone.wav", "label": "low"})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(SftError, match=r"clips/low/gone\.wav.*does not exist"):
        encoded_splits(tmp_path, tiny_wav2vec2)


def test_freeze_feature_encoder_freezes_only_the_convolutions(tiny_wav2vec2):
    from sft.training.model import load_classifier

    model = load_classifier(str(tiny_wav2vec2), ["a", "b"], AUDIO, freeze_feature_encoder=True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("wav2vec2.feature_extractor.") for n in frozen)
    assert all(p.requires_grad for n, p in model.named_parameters() if n.startswith("classifier"))


def test_whisper_encoder_gets_its_fixed_30_second_window(audiofolder, tmp_path):
    from sft.training.model import load_classifier

    checkpoint = tiny_model("whisper", tmp_path / "whisper")
    encoded, inputs = encoded_splits(audiofolder, checkpoint)
    batch = inputs.collator(train=False)([encoded.test[i] for i in range(3)])
    assert batch["input_features"].shape == (3, 80, 3000)
    assert inputs.lengths(encoded.train) is None  # every clip costs the window: no grouping
    model = load_classifier(str(checkpoint), encoded.labels, AUDIO)
    assert torch.isfinite(model(**batch).loss)


@pytest.mark.slow
def test_cli_trains_evaluates_and_saves_a_pipeline_ready_model(
    tmp_path, audiofolder, tiny_wav2vec2
):
    from transformers import pipeline

    run_dir = tmp_path / "run"
    result = run_cli(
        "recipe=wav2vec2_digits",
        f"model.checkpoint={tiny_wav2vec2}",
        f"data.path={audiofolder}",
        f"output_dir={run_dir}",
        "trainer.epochs=2",
        "trainer.batch_size=8",
        "trainer.log_every=2",
        "trainer.progress=false",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_run_outputs(run_dir, "model/preprocessor_config.json")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_examples"] == 12
    classify = pipeline("audio-classification", model=str(run_dir / "model"), device="cpu")
    files = sorted((audiofolder / "test").glob("*/*"))
    predicted = [
        classify(
            {"raw": load_audio({"path": str(f), "bytes": None}, 16000), "sampling_rate": 16000}
        )[0]["label"]
        for f in files
    ]
    accuracy = np.mean([p == f.parent.name for p, f in zip(predicted, files, strict=True)])
    assert accuracy == pytest.approx(metrics["accuracy"])
