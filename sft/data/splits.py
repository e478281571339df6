"""From a raw `DatasetDict` to checked train / validation / test splits with integer labels.

Modality-agnostic: it knows the label column and the name of the input column, nothing more.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets
import numpy as np
from sklearn.model_selection import train_test_split

from sft.data.columns import column_values, require_columns
from sft.data.targets import TargetSpec, arrow_column, read_targets
from sft.errors import SftError

if TYPE_CHECKING:
    from sft.problems import Problem

log = logging.getLogger(__name__)

LABELS = "labels"  # the target column every model in transformers reads


@dataclass
class Splits:
    train: datasets.Dataset
    validation: datasets.Dataset
    test: datasets.Dataset | None
    labels: list[str]  # label (or regression target) names; a label's id is its index here

    def items(self) -> list[tuple[str, datasets.Dataset]]:
        named = [("train", self.train), ("validation", self.validation), ("test", self.test)]
        return [(name, ds) for name, ds in named if ds is not None]

    def get(self, name: str) -> datasets.Dataset | None:
        """The split called `name` (train, validation, test), or None where there is none."""
        return dict(self.items()).get(name)

    def train_targets(self) -> np.ndarray:
        """The train split's targets: class ids, 0/1 rows or numbers (sft/data/targets.py)."""
        return np.asarray(column_values(self.train, LABELS))

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
    problem: Problem,
    input_key: str = "data.text_column",
    eval_fraction: float = 0.1,
    test_fraction: float = 0.0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 42,
    label_columns: list[str] | tuple[str, ...] = (),
    label_separator: str | None = None,
) -> Splits:
    """Check columns and targets, carve missing validation/test splits out of train (stratified
    by class where `problem` stratifies), cap sizes. Targets and their names: `problem` reads
    them (sft/data/targets.py)."""
    spec = TargetSpec(label_column, tuple(label_columns or ()), label_separator)
    if "train" not in raw:
        raise SftError(
            f"{source} has no train split (found: {sorted(raw)}); name a file or folder 'train'"
        )
    for split, ds in raw.items():
        wanted = [(input_key, input_column)] + [(spec.key, c) for c in spec.sources]
        require_columns(ds, wanted, f"the {split} split of {source}")
        if len(ds) == 0:
            raise SftError(f"the {split} split of {source} is empty; it needs at least one row")

    names, targets = read_targets(raw, spec, problem, source)
    encoded = {
        split: raw[split].select_columns([input_column]).add_column(LABELS, arrow_column(values))
        for split, values in targets.items()
    }
    by_class = problem.stratifies
    train = encoded["train"]
    test = encoded.get("test")
    if test is None and test_fraction > 0:
        train, test = _stratified_split(train, test_fraction, seed, "data.test_fraction", by_class)
    validation = encoded.get("validation")
    if validation is None:
        train, validation = _stratified_split(
            train, eval_fraction, seed, "data.eval_fraction", by_class
        )

    return Splits(
        train=_cap(train, max_train_samples, seed),
        validation=_cap(validation, max_eval_samples, seed),
        test=_cap(test, max_eval_samples, seed) if test is not None else None,
        labels=names,
    )


def _stratified_split(
    ds: datasets.Dataset, fraction: float, seed: int, key: str, by_class: bool = True
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Hold out `fraction` of `ds`, each class in proportion when `by_class` (and every class
    has the examples for it), else at random."""
    if not 0 < fraction < 1:
        raise SftError(f"{key}={fraction} must lie between 0 and 1 to carve a split out of train")
    held_out = max(1, round(len(ds) * fraction))
    if held_out >= len(ds):
        raise SftError(f"train has {len(ds)} rows: too few to hold out {key}={fraction}")
    stratify = None
    if by_class:
        labels = column_values(ds, LABELS)
        counts = Counter(labels)
        fits = len(counts) <= min(held_out, len(ds) - held_out)
        stratify = labels if min(counts.values()) >= 2 and fits else None
        if stratify is None:
            log.warning("too few examples per class to stratify %s; splitting at random", key)
    keep, hold = train_test_split(
        np.arange(len(ds)), test_size=held_out, random_state=seed, stratify=stratify
    )
    return ds.select(np.sort(keep)), ds.select(np.sort(hold))  # arrays: see ids above


def _cap(ds: datasets.Dataset, limit: int | None, seed: int) -> datasets.Dataset:
    if limit is None or limit >= len(ds):
        return ds
    return ds.shuffle(seed=seed).select(range(limit))
