"""Evaluate a fine-tuned model on any data set the training data layer reads:

    python -m sft.evaluate <run_dir | model_dir> data.path=<data> [data.<key>=...] [split]

Writes metrics.json (accuracy, macro-F1, per-class report, confusion matrix) and
confusion_matrix.png to --output-dir (default <run_dir>/evaluations/<data>-<split>, or
evaluations/<data>-<split> beside a model directory). Labels are matched to the model's by name;
a label the model does not know is an error that lists both.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sft import config as schema
from sft.errors import SftError, exit_with

log = logging.getLogger(__name__)


def evaluate_model(
    source: str, overrides: list[str], split: str | None, output_dir: Path | None
) -> dict[str, Any]:
    """Metrics of the model in `source` on the data the overrides name; writes them out."""
    from accelerate import Accelerator
    from torch.utils.data import DataLoader

    from sft import loop, metrics, plots
    from sft.data import load_raw
    from sft.data.splits import Splits
    from sft.model import AUTO_CLASSES, resolve
    from sft.train import make_inputs

    model_ref = resolve(source)
    cfg = _config(source, model_ref.ref, model_ref.task, overrides)
    inputs, _ = make_inputs(cfg)
    raw = load_raw(
        cfg.data.path,
        name=cfg.data.name,
        encodings=cfg.data.encodings,
        input_column=inputs.column,
        label_column=cfg.data.label_column,
        input_is_path=cfg.task != "text-classification",
    )
    split = _choose_split(raw, split, cfg.data.path)
    model = AUTO_CLASSES[cfg.task].from_pretrained(model_ref.ref)
    labels = [model.config.id2label[i] for i in range(len(model.config.id2label))]
    ds = _with_label_ids(raw[split], cfg.data.label_column, labels, f"{cfg.data.path} ({split})")
    # Inputs encode whole splits; an empty validation split costs nothing.
    encoded = inputs.encode(Splits(ds, ds.select([]), None, labels)).train
    loader = DataLoader(
        encoded, batch_size=cfg.trainer.eval_batch_size, collate_fn=inputs.collator(train=False)
    )
    accelerator = Accelerator()
    model, loader = accelerator.prepare(model, loader)
    result = loop.evaluate(accelerator, model, loader)
    report = {
        "split": split,
        "data": cfg.data.path,
        "model": model_ref.ref,
        **metrics.report(result.predictions, result.references, labels),
        "loss": result.loss,
    }
    name = Path(cfg.data.path).name or "data"
    default_parent = Path(source) / "evaluations" if (Path(source) / "model").is_dir() else None
    out = output_dir or (default_parent or Path("evaluations")) / f"{name}-{split}"
    out.mkdir(parents=True, exist_ok=True)
    plots.plot_confusion(
        report["confusion_matrix"], labels, f"{name} {split}", out / "confusion_matrix.png"
    )
    (out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info(
        "%s %s: accuracy %.4f, macro-F1 %.4f on %d examples -> %s",
        name,
        split,
        report["accuracy"],
        report["f1"],
        report["num_examples"],
        out,
    )
    return report


def _config(source: str, model_dir: str, task: str, overrides: list[str]) -> schema.Config:
    """The run's config (or the defaults, for a bare model) with the overrides on top, checked
    against the schema; the model is the fine-tuned one."""
    run_config = Path(source) / "config.yaml"
    base = OmegaConf.structured(schema.Config)
    layers = [OmegaConf.load(run_config)] if run_config.is_file() else [{"task": task}]
    from sft.train import to_config

    fixed = {"model": {"checkpoint": model_dir}, "output_dir": ""}  # nothing is trained
    try:
        merged = OmegaConf.merge(base, *layers, OmegaConf.from_dotlist(overrides), fixed)
    except OmegaConfBaseException as err:
        raise SftError(f"{str(err).splitlines()[0]}; check the key=value arguments") from err
    return to_config(merged)


def _choose_split(raw, split: str | None, source: str) -> str:
    if split is not None:
        if split not in raw:
            raise SftError(f"{source} has no '{split}' split; its splits: {sorted(raw)}")
        return split
    if "test" in raw:
        return "test"
    if len(raw) == 1:
        return next(iter(raw))
    raise SftError(f"{source} has splits {sorted(raw)}; name the one to evaluate")


def _with_label_ids(ds, column: str, labels: list[str], where: str):
    """`ds` with the model's label ids in LABELS, matched by label name."""
    import datasets

    from sft.data.splits import LABELS

    if column not in ds.column_names:
        raise SftError(
            f"column '{column}' not found in {where}; columns found: {ds.column_names}; set "
            f"data.label_column=<one of them>"
        )
    feature = ds.features[column]
    names = [
        feature.int2str(v) if isinstance(feature, datasets.ClassLabel) else str(v)
        for v in ds[column]
    ]
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise SftError(
            f"{where} has labels the model does not know: {unknown[:10]}; the model's labels "
            f"are {labels}. Map or drop those rows"
        )
    if LABELS in ds.column_names:
        ds = ds.remove_columns(LABELS)
    return ds.add_column(LABELS, [index[n] for n in names])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sft.evaluate",
        description="Evaluate a fine-tuned model on a data set.",
    )
    parser.add_argument("model", help="run directory or model directory")
    parser.add_argument("args", nargs="*", help="data.<key>=<value> overrides, then a split name")
    parser.add_argument("--output-dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = [a for a in args.args if "=" in a]
    splits = [a for a in args.args if "=" not in a]
    try:
        if len(splits) > 1:
            raise SftError(f"one split at most, got {splits}")
        if not any(o.startswith("data.path=") for o in overrides):
            raise SftError("name the data to evaluate on: data.path=<hub id, file or directory>")
        evaluate_model(args.model, overrides, splits[0] if splits else None, args.output_dir)
    except SftError as err:
        exit_with(err)


if __name__ == "__main__":
    main()
