"""Prepare offline assets that no package ships ready to use.

    python -m sft.prepare fashion-mnist --source DIR --out data/fashion_mnist
        Fashion-MNIST idx files (Debian's dataset-fashion-mnist) -> an imagefolder of PNGs.
    python -m sft.prepare tiny-model vit|resnet --out DIR
        A small image classifier built from a config (random weights) with its image processor,
        saved like a hub checkpoint: for offline runs and tests where no pretrained one exists.

The Makefile runs these (`make data-images`); users online need none of them.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import struct
from pathlib import Path

import numpy as np

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
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        zero, dtype, ndim = struct.unpack(">HBB", f.read(4))
        if zero != 0 or dtype != 0x08:
            raise ValueError(f"{path} is not an idx file of unsigned bytes")
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


def tiny_model(kind: str, out: Path, image_size: int = 32, num_channels: int = 3) -> Path:
    """A small, randomly initialised `kind` (vit | resnet) classifier plus image processor."""
    from transformers import (
        ConvNextImageProcessor,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    if kind == "vit":
        config = ViTConfig(
            image_size=image_size,
            patch_size=4,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=128,
            num_channels=num_channels,
        )
        model = ViTForImageClassification(config)
        processor = ViTImageProcessor(
            size={"height": image_size, "width": image_size},
            image_mean=[0.5] * num_channels,
            image_std=[0.5] * num_channels,
        )
    elif kind == "resnet":
        config = ResNetConfig(
            embedding_size=16,
            hidden_sizes=[16, 32, 64, 128],
            depths=[1, 1, 1, 1],
            layer_type="basic",
            num_channels=num_channels,
        )
        model = ResNetForImageClassification(config)
        processor = ConvNextImageProcessor(
            size={"shortest_edge": image_size},
            crop_pct=1.0,
            image_mean=[0.5] * num_channels,
            image_std=[0.5] * num_channels,
        )
    else:
        raise ValueError(f"unknown tiny model kind '{kind}'; use vit or resnet")
    model.save_pretrained(out)
    processor.save_pretrained(out)
    log.info("wrote %s", out)
    return out


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m sft.prepare", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fm = commands.add_parser("fashion-mnist", help="Fashion-MNIST idx files -> imagefolder")
    fm.add_argument("--source", type=Path, required=True, help="folder with *-idx?-ubyte.gz")
    fm.add_argument("--out", type=Path, required=True)
    fm.add_argument("--train-per-class", type=int, default=600)  # 6,000 train images in all
    fm.add_argument("--test-per-class", type=int, default=100)  # 1,000 test images in all
    tm = commands.add_parser("tiny-model", help="a small image classifier from a config")
    tm.add_argument("kind", choices=["vit", "resnet"])
    tm.add_argument("--out", type=Path, required=True)
    tm.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args(argv)
    if args.command == "fashion-mnist":
        fashion_mnist(args.source, args.out, args.train_per_class, args.test_per_class)
    else:
        tiny_model(args.kind, args.out, args.image_size)


if __name__ == "__main__":
    main()
