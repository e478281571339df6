"""From a raw `DatasetDict` to checked train / validation / test splits with integer labels.

Modality-agnostic: it knows the label column and the name of the input column, nothing more.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import datasets
import numpy as np
from sklearn.model_selection import train_test_split

from sft.errors import SftError

log = logging.getLogger(__name__)

LABELS = "labels"  # the integer label column every model in transformers reads


@dataclass
class Splits:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    labels: list[str]  # label names; a label's id is its index here

    def items(self) -> list[tuple[str, datasets.Dataset]]:
        named = [("train", self.train), ("validation", self.validation), ("test", self.test)]
        return [(name, ds) for name, ds in named if ds is not None]

    def map(self, fn: Callable[[datasets.Dataset, str], datasets.Dataset]) -> Splits:
        """The same splits with `fn(dataset, split_name)` applied to each."""
        return Splits(
            train=fn(self.train, "train"),
            validation=fn(self.validation, "validation"),
            test=fn(self.test, "test") if self.test is not None else None,
            labels=self.labels,
        )


def build_splits(
    raw: datasets.DatasetDict,
    *,
    source: str,
    input_column: str,
    label_column: str,
    input_key: str = "data.text_column",
    eval_fraction: float = 0.1,
    test_fraction: float = 0.0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
) -> Splits:
    """Check columns and labels, carve missing validation/test splits out of train, cap sizes.

    Labels: a `ClassLabel` column keeps its names; otherwise the sorted distinct train values
    become the names (numbers sorted numerically), so the mapping is the same on every run.
    """
    if "train" not in raw:
        raise SftError(
            f"{source} has no train split (found: {sorted(raw)}); name a file or folder 'train'"
        )
    for split, ds in raw.items():
        missing = [
            (key, col)
            for key, col in (
                (input_key, input_column),
                ("data.label_column", label_column),
            )
            if col not in ds.column_names
        ]
        if missing:
            key, col = missing[0]
            raise SftError(
                f"column '{col}' not found in the {split} split of {source}; columns found: "
                f"{ds.column_names}; set {key}=<one of them>"
            )
        if len(ds) == 0:
            raise SftError(f"the {split} split of {source} is empty; it needs at least one row")

    _check_labels_filled(raw["train"], "train", source, label_column)
    names, encode = _label_names(raw["train"], label_column)
    if len(names) < 2:
        raise SftError(
            f"the train split of {source} has {len(names)} distinct label(s) {names}; a "
            f"classifier needs at least two"
        )
    encoded = {}
    for split, ds in raw.items():
        values = column_values(ds, label_column)
        if split != "train" and all(v is None or (isinstance(v, int) and v < 0) for v in values):
            # Hub benchmarks (GLUE...) ship test splits with hidden labels, as -1.
            log.warning("ignoring the %s split of %s: it has no labels", split, source)
            continue
        if split != "train":  # train was checked before its labels were named
            _check_labels_filled(ds, split, source, label_column)
        unseen = sorted({str(v) for v in values if encode(v) is None})
        if unseen:
            raise SftError(
                f"the {split} split of {source} has label(s) {unseen[:5]} that train never saw "
                f"(train labels: {names}); drop those rows or add training examples for them"
            )
        # An array, not a list: datasets fingerprints the arguments (a list element by element)
        ids = np.array([encode(v) for v in values], dtype=np.int64)
        keep = [c for c in ds.column_names if c == input_column]
        encoded[split] = ds.select_columns(keep).add_column(LABELS, ids)

    train = encoded["train"]
    test = encoded.get("test")
    if test is None and test_fraction > 0:
        train, test = _stratified_split(train, test_fraction, seed, "data.test_fraction")
    validation = encoded.get("validation")
    if validation is None:
        train, validation = _stratified_split(train, eval_fraction, seed, "data.eval_fraction")

    return Splits(
        train=_cap(train, max_train_samples, seed),
        validation=_cap(validation, max_eval_samples, seed),
        test=_cap(test, max_eval_samples, seed) if test is not None else None,
        labels=names,
    )


def _label_names(train: datasets.Dataset, name: str):
    feature = train.features[name]
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)
        return names, lambda v: v if isinstance(v, int) and 0 <= v < len(names) else None
    values = set(column_values(train, name))
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        ordered = sorted(values)
    else:
        ordered = sorted(values, key=str)
    names = [str(v) for v in ordered]
    index = {str(v): i for i, v in enumerate(ordered)}
    return names, lambda v: index.get(str(v))


def _check_labels_filled(ds: datasets.Dataset, split: str, source: str, name: str) -> None:
    """An SftError naming the rows whose label is empty (a blank CSV cell reads as None or NaN)."""
    values = column_values(ds, name)
    empty = [i for i, v in enumerate(values) if v is None or (isinstance(v, float) and v != v)]
    if empty:
        raise SftError(
            f"the {split} split of {source} has {len(empty)} empty label(s) in column "
            f"'{name}' (the first in row {empty[0] + 1}); fill or drop those rows"
        )


def _stratified_split(
    ds: datasets.Dataset, fraction: float, seed: int, key: str
) -> tuple[datasets.Dataset, datasets.Dataset]:
    if not 0 < fraction < 1:
        raise SftError(f"{key}={fraction} must lie between 0 and 1 to carve a split out of train")
    labels = column_values(ds, LABELS)
    held_out = max(1, round(len(ds) * fraction))
    if held_out >= len(ds):
        raise SftError(f"train has {len(ds)} rows: too few to hold out {key}={fraction}")
    counts = Counter(labels)
    stratifiable = min(counts.values()) >= 2 and len(counts) <= min(held_out, len(ds) - held_out)
    stratify = labels if stratifiable else None
    if stratify is None:
        log.warning("too few examples per class to stratify %s; splitting at random", key)
    keep, hold = train_test_split(
        np.arange(len(ds)), test_size=held_out, random_state=seed, stratify=stratify
    )
    return ds.select(np.sort(keep)), ds.select(np.sort(hold))  # arrays: see ids above


def column_values(ds: datasets.Dataset, name: str) -> list:
    """A column's values as a list, read from Arrow at once: `ds[name]` is a lazy column that
    yields row by row, ~40x slower on hundreds of thousands of rows."""
    return ds.with_format("arrow")[name].to_pylist()


def iter_column(ds: datasets.Dataset, name: str, chunk: int = 1000) -> Iterator[Any]:
    """A column's values one by one, read from Arrow `chunk` rows at a time: as fast as
    `column_values`, without holding a column of embedded image or audio bytes at once."""
    for rows in ds.select_columns([name]).with_format("arrow").iter(batch_size=chunk):
        yield from rows.column(name).to_pylist()


def _cap(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))
