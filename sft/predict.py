"""Classify inputs with a fine-tuned model:

    python -m sft.predict <run_dir | model_dir | hub id> <inputs...> [--top-k 3]
        [--column text] [--output predictions.csv | predictions.json] [--batch-size 32]
        [--precision auto | fp32 | bf16]

Inputs are text strings, text files, image or audio files, directories of them, or CSV / TSV /
JSON / JSONL / Parquet tables with a column of texts or file paths (relative to the table).
Each gets its label and score and the top k labels (multi-label models: every label above the
threshold tuned on validation; regression models: the predicted value of each target), printed
as a table or written to --output.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from sft import cli
from sft.config import DataConfig
from sft.data.sources import FORMATS, MEDIA
from sft.errors import SftError, first_line
from sft.modalities import Modality
from sft.problems.head import head_in_fp32
from sft.runs.directory import check_writable, strict_json
from sft.training.model import TrainedModel, resolve

log = logging.getLogger(__name__)


def collect(inputs: list[str], modality: Modality, column: str) -> list[tuple[str, str]]:
    """(name shown, value) per example: texts for text models, file paths otherwise."""
    kind = modality.name
    items: list[tuple[str, str]] = []
    for arg in inputs:
        path = Path(arg)
        if path.is_dir():
            files = sorted(f for f in path.rglob("*") if MEDIA.get(f.suffix.lower()) == kind)
            if not files:
                raise SftError(f"directory {arg} holds no {kind} files")
            items += [_file_item(f, modality) for f in files]
        elif path.is_file() and path.suffix.lower() in FORMATS:
            items += _table_items(path, modality, column)
        elif path.is_file():
            if MEDIA.get(path.suffix.lower()) != kind:
                raise SftError(
                    f"{arg} is not a {kind} file the model can read (known suffixes: "
                    f"{', '.join(s for s, k in MEDIA.items() if k == kind)})"
                )
            items.append(_file_item(path, modality))
        elif modality.reads_files:
            raise SftError(f"{arg} does not exist; give {kind} files or directories")
        elif path.suffix.lower() in FORMATS or path.suffix.lower() in MEDIA or _path_like(arg):
            # Named like a file or folder: a typo in a path must not be classified as a text.
            raise SftError(f"{arg} does not exist; check the path (texts are given as they are)")
        else:  # the argument is the text itself
            items.append((arg, arg))
    return items


def _file_item(path: Path, modality: Modality) -> tuple[str, str]:
    if modality.reads_files:
        return str(path), str(path.resolve())
    return str(path), path.read_text(encoding="utf-8", errors="replace")


def _table_items(path: Path, modality: Modality, column: str) -> list[tuple[str, str]]:
    import pandas as pd

    readers = {
        ".csv": pd.read_csv,
        ".tsv": lambda p: pd.read_csv(p, sep="\t"),
        ".json": pd.read_json,
        ".jsonl": lambda p: pd.read_json(p, lines=True),
        ".parquet": pd.read_parquet,
    }
    try:
        table = readers[path.suffix.lower()](path)
    except (OSError, ValueError, UnicodeDecodeError) as err:  # pandas' parser errors too
        raise SftError(f"{path} cannot be read as {path.suffix} ({first_line(err)})") from err
    if column not in table.columns:
        raise SftError(
            f"{path} has no column '{column}' (columns: {', '.join(map(str, table.columns))}); "
            f"name the input column with --column"
        )
    values = table[column].tolist()
    if modality.reads_files:  # paths, relative to the table
        return [(str(v), str((path.parent / str(v)).resolve())) for v in values]
    return [(str(v)[:60], str(v)) for v in values]


def load_pipeline(model: TrainedModel):
    """The `transformers.pipeline` of a fine-tuned model, with the processor sft trained with."""
    from transformers import pipeline

    return pipeline(model.task, model=model.ref, **model.modality.pipeline_options(model.ref))


def classify(
    classifier,
    modality: Modality,
    items: list[tuple[str, str]],
    top_k: int,
    batch_size: int,
    progress: bool,
) -> list[dict[str, Any]]:
    """One row per item, in the items' order: its input, then what its problem predicts
    (`Problem.prediction`: single-label label, score, top_k; multi-label labels, top_k;
    regression each target's value). The model sees `batch_size` inputs
    at a time; texts go longest first, so that each batch, padded to its longest, holds texts
    of similar length."""
    from tqdm.auto import tqdm

    from sft import problems

    read, options = modality.reader(classifier), modality.call_options()
    config = classifier.model.config
    windowed = getattr(config, "long_text", None)  # data.long_text=chunks: cut and pool
    problem = problems.of_model(config)
    order = list(range(len(items)))
    if not modality.reads_files:  # characters: a free stand-in for tokens
        order.sort(key=lambda i: -len(items[i][1]))
    rows: list[dict[str, Any]] = [{} for _ in items]
    bar = tqdm(total=len(items), desc="predict", disable=not progress or len(items) < batch_size)
    for start in range(0, len(items), batch_size):
        chunk = order[start : start + batch_size]
        values = [read(items[i][1]) for i in chunk]
        k = None if problem.needs_every_score else top_k  # None: every label's score
        if windowed is not None:
            outputs = _pooled(classifier, values, windowed, k, batch_size)
        else:
            outputs = classifier(values, top_k=k, batch_size=batch_size, **options)
        for i, scores in zip(chunk, outputs, strict=True):
            scores = [{"label": s["label"], "score": float(s["score"])} for s in scores]
            rows[i] = {"input": items[i][0], **problem.prediction(scores, config, top_k)}
        bar.update(len(chunk))
    bar.close()
    return rows


def _pooled(classifier, texts: list[str], settings: dict, top_k: int | None, batch_size: int):
    """The pipeline's scores of each text, cut into windows as training cut them and their
    logits pooled into one (sft/data/windows.py)."""
    import torch

    from sft.data.windows import cut, pool

    windows, text_of = cut(classifier.tokenizer, texts, settings["max_length"],
                           settings["stride"], settings["max_chunks"])  # fmt: skip
    logits = []
    for start in range(0, len(text_of), batch_size):
        part = {k: v[start : start + batch_size] for k, v in windows.items()}
        batch = classifier.tokenizer.pad(part, return_tensors="pt").to(classifier.device)
        with torch.inference_mode():
            logits.append(classifier.model(**batch).logits.float().cpu())
    pooled, _ = pool(torch.cat(logits), torch.zeros(len(text_of)), torch.tensor(text_of),
                     settings["pool"])  # fmt: skip
    return [classifier.postprocess({"logits": pooled[i : i + 1]}, top_k=top_k, _legacy=False)
            for i in range(len(texts))]  # fmt: skip


def write(rows: list[dict[str, Any]], output: Path | None) -> None:
    """A table on stdout, or --output as .csv (lists and dicts as JSON) or .json."""
    fields = list(rows[0]) if rows else ["input"]
    if output is None:
        width = max([len(r["input"][:60]) for r in rows] + [5])
        print("  ".join([f"{'input':<{width}}", *fields[1:]]))  # noqa: T201
        for r in rows:
            cells = [_shown(r[f]) for f in fields[1:]]
            print("  ".join([f"{r['input'][:60]:<{width}}", *cells]))  # noqa: T201
        return
    if output.suffix.lower() == ".json":
        output.write_text(strict_json(rows, indent=2) + "\n")
    elif output.suffix.lower() == ".csv":
        with output.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: v if isinstance(v, (str, float)) else json.dumps(v)
                                 for k, v in r.items()})  # fmt: skip
    else:
        raise SftError(f"--output {output}: write .csv or .json")
    log.info("wrote %d predictions to %s", len(rows), output)


def _path_like(arg: str) -> bool:
    """A folder's path rather than a text: one word ending in a slash or starting as paths do."""
    one_word = not any(c.isspace() for c in arg)
    return one_word and (arg.endswith("/") or arg.startswith(("/", "./", "../", "~/")))


def _check_options(args) -> None:
    """Bad options, named before any model is loaded or input read."""
    for flag, value in (("--top-k", args.top_k), ("--batch-size", args.batch_size)):
        if value < 1:
            raise SftError(f"{flag} {value}: give 1 or more")
    if args.output is not None:
        if args.output.suffix.lower() not in (".csv", ".json"):
            raise SftError(f"--output {args.output}: write .csv or .json")
        if args.output.is_dir():
            raise SftError(f"--output {args.output} is a directory; name a .csv or .json file")
        check_writable(args.output.parent, "--output")


def _shown(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list) and value and isinstance(value[0], dict):  # top_k
        return ", ".join(f"{t['label']} {t['score']:.3f}" for t in value)
    if isinstance(value, list):
        return ", ".join(value) or "-"
    return f"{value:<16}"


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sft.predict", __doc__.split("\n")[0])
    parser.add_argument("model", help="run directory, model directory or hub id")
    parser.add_argument("inputs", nargs="+", help="texts, files, directories or tables")
    parser.add_argument("--top-k", type=int, default=3, help="labels per input (default 3)")
    parser.add_argument("--column", help="the input column of tables (default: the run's)")
    parser.add_argument("--output", type=Path, help="write .csv or .json instead of printing")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="as trainer.precision: auto is bf16 where the CPU or GPU has bf16 units",
    )
    parser.add_argument("--no-progress", action="store_true")
    cli.run(parser, predict, argv)


def predict(args) -> None:
    from sft.training.inference import autocast, inference_precision

    _check_options(args)
    model = resolve(args.model)
    default_column = getattr(DataConfig(), model.modality.column_key)
    column = args.column or model.column or default_column
    items = collect(args.inputs, model.modality, column)
    classifier = load_pipeline(model)
    head_in_fp32(classifier.model)
    device = classifier.device.type
    with autocast(inference_precision(classifier.model, args.precision, device), device):
        rows = classify(
            classifier, model.modality, items, args.top_k, args.batch_size, not args.no_progress
        )
    write(rows, args.output)


if __name__ == "__main__":
    main()
