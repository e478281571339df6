"""Images on the same loop: tiny ViT and ResNet built from configs, imagefolder and manifest
data written here (PNG/JPEG; grey, RGBA and palette modes), augmentation, bad images."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from sft.config import DataConfig, TrainerConfig
from sft.data import build_splits, load_raw
from sft.data.loaders import loaders
from sft.errors import SftError
from sft.modalities.image import ImageInputs, image_augmenter, num_channels
from sft.prepare import tiny_model
from sft.problems import PROBLEMS
from tests.conftest import assert_run_outputs, run_cli

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}
MODES = ["RGB", "L", "RGBA", "P"]


def write_image(path, colour, mode: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    size = (24 + seed % 9, 20 + seed % 7)  # varied sizes: the processor resizes
    noise = rng.integers(-25, 25, (size[1], size[0], 3))
    pixels = np.clip(np.array(colour) + noise, 0, 255).astype("uint8")
    image = Image.fromarray(pixels, "RGB")
    image = image.convert(mode) if mode != "P" else image.quantize(16)
    if path.suffix == ".jpg":
        image = image.convert("RGB" if mode != "L" else "L")
    image.save(path)


def image_tree(root, per_class: int, seed: int = 0):
    """root/<colour>/<n>.png|.jpg, cycling through colour modes and both formats."""
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ".jpg" if i % 3 == 0 else ".png"
            write_image(root / name / f"{i}{suffix}", colour, MODES[i % 4], seed + 100 * c + i)
    return root


@pytest.fixture(scope="session")
def tiny_vit(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_model("vit", tmp_path_factory.mktemp("vit"), image_size=32)


@pytest.fixture(scope="session")
def tiny_resnet(tmp_path_factory):
    torch.manual_seed(0)
    return tiny_model("resnet", tmp_path_factory.mktemp("resnet"), image_size=32)


@pytest.fixture
def imagefolder(tmp_path):
    root = tmp_path / "images"
    image_tree(root / "train", per_class=16, seed=0)
    image_tree(root / "test", per_class=4, seed=1000)
    return root


def splits_of(root, column="image"):
    raw = load_raw(str(root), input_column=column, input_is_path=True)
    return build_splits(
        raw,
        source=str(root),
        input_column=column,
        label_column="label",
        problem=PROBLEMS["single_label"],
    )


def test_imagefolder_loads_paths_and_class_labels(imagefolder):
    splits = splits_of(imagefolder)
    assert splits.labels == ["blue", "green", "red"]
    assert len(splits.test) == 12 and len(splits.train) + len(splits.validation) == 48


@pytest.mark.parametrize("channels", [3, 1])
def test_every_colour_mode_becomes_what_the_model_expects(imagefolder, tmp_path, channels):

    checkpoint = tiny_model("vit", tmp_path / "vit", image_size=32, num_channels=channels)
    assert num_channels(str(checkpoint)) == channels
    splits = splits_of(imagefolder)
    inputs = ImageInputs(str(checkpoint), "image", num_channels=channels)
    encoded = inputs.encode(splits)
    examples = [encoded.train[i] for i in range(8)]  # all four modes, PNG and JPEG
    batch = inputs.collator(train=False)(examples)
    assert batch["pixel_values"].shape == (8, channels, 32, 32)
    assert batch["labels"].tolist() == [e["labels"] for e in examples]


def test_augmentation_changes_train_batches_and_never_eval_batches(imagefolder, tiny_vit):
    augment = image_augmenter(zoom=0.2, hflip=0.5, shear=10.0, color_jitter=0.2)
    inputs = ImageInputs(str(tiny_vit), "image", augment=augment)
    encoded = inputs.encode(splits_of(imagefolder))
    examples = [encoded.train[i] for i in range(8)]
    torch.manual_seed(1)
    train_a = inputs.collator(train=True)(examples)["pixel_values"]
    train_b = inputs.collator(train=True)(examples)["pixel_values"]
    eval_a = inputs.collator(train=False)(examples)["pixel_values"]
    eval_b = inputs.collator(train=False)(examples)["pixel_values"]
    plain = ImageInputs(str(tiny_vit), "image").collator(train=False)(examples)["pixel_values"]
    assert train_a.shape == eval_a.shape
    assert not torch.equal(train_a, train_b)
    assert not torch.equal(train_a, eval_a)
    assert torch.equal(eval_a, eval_b) and torch.equal(eval_a, plain)


def test_images_are_shuffled_plainly_and_evaluated_in_order(imagefolder, tiny_vit):
    inputs = ImageInputs(str(tiny_vit), "image")
    encoded = inputs.encode(splits_of(imagefolder))
    assert inputs.lengths(encoded.train) is None  # one size after resizing: nothing to group
    drawn = loaders(encoded, inputs, DataConfig(), TrainerConfig(batch_size=4), seed=0)
    assert isinstance(drawn.train.sampler, torch.utils.data.RandomSampler)
    assert list(drawn.test.sampler) == list(range(len(encoded.test)))


def test_augmenter_is_off_when_every_knob_is_zero():
    assert image_augmenter() is None


def test_corrupt_image_is_named(imagefolder, tiny_vit):
    bad = imagefolder / "train" / "red" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    inputs = ImageInputs(str(tiny_vit), "image")
    with pytest.raises(SftError, match=r"broken\.png.*cannot be decoded"):
        inputs.encode(splits_of(imagefolder))


def test_jpeg_cut_in_its_header_is_named_before_training(imagefolder, tiny_vit):
    good = (imagefolder / "train" / "blue" / "0.jpg").read_bytes()
    (imagefolder / "train" / "blue" / "cut.jpg").write_bytes(good[: len(good) // 2])
    inputs = ImageInputs(str(tiny_vit), "image")
    with pytest.raises(SftError, match=r"cut\.jpg' \(train split\) cannot be decoded"):
        inputs.encode(splits_of(imagefolder))


def test_truncated_jpeg_is_named_by_the_batch_that_reads_it(imagefolder, tiny_vit):
    """Up front only headers are read (cheap at any size); a file whose header is whole but
    whose pixel data are cut off stops the run at the batch that decodes it, by name."""
    good = (imagefolder / "train" / "blue" / "0.jpg").read_bytes()
    (imagefolder / "train" / "blue" / "cut.jpg").write_bytes(good[:-40])  # pixel data only
    inputs = ImageInputs(str(tiny_vit), "image")
    encoded = inputs.encode(splits_of(imagefolder))  # the header is intact
    rows = [row for row in encoded.train if row["image"]["path"].endswith("cut.jpg")]
    assert len(rows) == 1
    with pytest.raises(SftError, match=r"cut\.jpg' \(in a batch\) cannot be decoded.*replace"):
        inputs.collator(train=False)([encoded.train[0], rows[0]])


def test_manifest_with_missing_file_is_named(tmp_path, tiny_vit):
    image_tree(tmp_path / "pics", per_class=4)
    rows = [{"image": f"pics/{c}/{i}.png", "label": c} for c in COLOURS for i in (1, 2)]
    rows.append({"image": "pics/red/missing.png", "label": "red"})
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    inputs = ImageInputs(str(tiny_vit), "image")
    with pytest.raises(SftError, match=r"pics/red/missing\.png.*does not exist"):
        inputs.encode(splits_of(tmp_path))


def test_label_folder_in_test_but_not_train_is_named(imagefolder):
    (imagefolder / "test" / "purple").mkdir()
    write_image(imagefolder / "test" / "purple" / "0.png", (120, 0, 120), "RGB", 1)
    with pytest.raises(SftError, match=r"\['purple'\].*train never saw"):
        splits_of(imagefolder)


def test_hub_style_image_column_is_accepted(tmp_path, tiny_vit):
    # A dataset whose column holds decoded images (as hub image datasets do), saved to disk.
    images = [Image.new("RGB", (20, 20), colour) for colour in COLOURS.values()] * 4
    labels = list(COLOURS) * 4
    ds = datasets.Dataset.from_dict({"img": images, "label": labels})
    ds = ds.cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "saved"))
    raw = load_raw(str(tmp_path / "saved"), input_column="img", input_is_path=True)
    splits = build_splits(
        raw,
        source="saved",
        input_column="img",
        label_column="label",
        eval_fraction=0.25,
        problem=PROBLEMS["single_label"],
    )
    inputs = ImageInputs(str(tiny_vit), "img")
    batch = inputs.collator(train=False)([inputs.encode(splits).train[0]])
    assert batch["pixel_values"].shape == (1, 3, 32, 32)


FAST = [
    "trainer.epochs=6",
    "trainer.batch_size=8",
    "trainer.log_every=2",
    "optimizer.lr=3e-3",
    "trainer.progress=false",
]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_cli_trains_evaluates_and_saves_a_pipeline_ready_model(
    kind, tmp_path, imagefolder, tiny_vit, tiny_resnet
):
    from transformers import pipeline

    checkpoint = tiny_vit if kind == "vit" else tiny_resnet
    run_dir = tmp_path / "run"
    result = run_cli(
        f"recipe={kind}_fashion_mnist",
        f"model.checkpoint={checkpoint}",
        f"data.path={imagefolder}",
        f"output_dir={run_dir}",
        *FAST,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert_run_outputs(run_dir, "model/preprocessor_config.json")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["num_examples"] == 12
    classify = pipeline("image-classification", model=str(run_dir / "model"), device="cpu")
    files = sorted((imagefolder / "test").glob("*/*"))
    predicted = [classify(Image.open(f))[0]["label"] for f in files]
    accuracy = np.mean([p == f.parent.name for p, f in zip(predicted, files, strict=True)])
    assert accuracy == pytest.approx(metrics["accuracy"])
