"""The offline asset builders: Fashion-MNIST idx files to an imagefolder, espeak-ng digits to an
audiofolder, tiny models that load through the Auto classes sft uses."""

from __future__ import annotations

import gzip
import shutil
import struct

import numpy as np
import pytest
import soundfile

from sft.prepare import DIGITS, FASHION_CLASSES, read_idx, spoken_digits, tiny_model
from tests.conftest import run_process


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trips(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x-idx3-ubyte.gz", array)
    np.testing.assert_array_equal(read_idx(tmp_path / "x-idx3-ubyte.gz"), array)


def test_fashion_mnist_becomes_an_imagefolder_with_named_classes(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        labels = np.arange(n) % 10
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    out = tmp_path / "out"
    result = run_process(  # `python -m sft.prepare`, as `make data-images` runs it
        "fashion-mnist", "--source", str(tmp_path), "--out", str(out),
        "--train-per-class", "3", "--test-per-class", "2", cwd=tmp_path, module="sft.prepare",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(FASHION_CLASSES)
    assert len(list((out / "train" / "bag").glob("*.png"))) == 3
    assert len(list((out / "test" / "bag").glob("*.png"))) == 2


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_spoken_digits_hold_out_voices_for_test(tmp_path):
    out = spoken_digits(tmp_path / "digits", speeds=(160,), pitches=(50,))
    train = sorted((out / "train" / "seven").glob("*.wav"))
    test = sorted((out / "test" / "seven").glob("*.wav"))
    assert sorted(p.name for p in (out / "train").iterdir()) == sorted(DIGITS)
    # <voice>-<variant>-<speed>-<pitch>.wav
    train_voices = {p.name.rsplit("-", 3)[0] for p in train}
    test_voices = {p.name.rsplit("-", 3)[0] for p in test}
    assert train_voices and test_voices and not train_voices & test_voices
    samples, rate = soundfile.read(train[0])
    assert rate == 22050 and 0.2 < len(samples) / rate < 2.0


@pytest.mark.parametrize("kind", ["vit", "resnet", "efficientnet", "wav2vec2", "whisper"])
def test_tiny_models_load_through_the_auto_classes(tmp_path, kind):
    from sft.modalities import get
    from sft.training.model import load_classifier

    images = ("vit", "resnet", "efficientnet")
    task = "image-classification" if kind in images else "audio-classification"
    model = load_classifier(str(tiny_model(kind, tmp_path / kind)), ["a", "b", "c"], get(task))
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"
