"""Each row's target, read by the run's problem type (sft/problems/: a class id, a 0/1 vector
over the label names, or numbers): `read_targets` checks every split's targets, names them,
and returns them as arrays for the LABELS column. The pieces every problem type's reader uses
live here: where targets come from (`TargetSpec`), empty cells, labels train never saw."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import datasets
import numpy as np

from sft.data.columns import column_values
from sft.errors import SftError

if TYPE_CHECKING:
    from sft.problems import Problem

log = logging.getLogger(__name__)

# encode(split, where) -> the split's targets, one row each; `where` names the split in errors
Encoder = Callable[[datasets.Dataset, str], np.ndarray]


@dataclass(frozen=True)
class TargetSpec:
    """Where targets come from: `data.label_column` (one value per row: a label, a list of
    labels, labels joined by `data.label_separator`, or a number), or `data.label_columns`
    (one 0/1 column per label, or one numeric column per target)."""

    column: str = "label"  # data.label_column
    columns: tuple[str, ...] = ()  # data.label_columns: one per label or target
    separator: str | None = None  # data.label_separator (label strings)

    @property
    def sources(self) -> tuple[str, ...]:
        """The raw columns the targets are read from."""
        return self.columns or (self.column,)

    @property
    def key(self) -> str:
        return "data.label_columns" if self.columns else "data.label_column"


def read_targets(
    raw: datasets.DatasetDict, spec: TargetSpec, problem: Problem, source: str
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Label (or target) names and, per split with targets, an array of them as `problem`
    encodes them. A split whose labels are all hidden (-1 or empty, as in GLUE's test splits)
    is left out, with a warning."""
    names = problem.target_names(raw["train"], spec, f"the train split of {source}")
    encode = problem.target_encoder(spec, names)
    targets = {}
    for split, ds in raw.items():
        if split != "train" and problem.unlabelled(ds, spec):
            log.warning("ignoring the %s split of %s: it has no labels", split, source)
            continue
        targets[split] = encode(ds, f"the {split} split of {source}")
    return names, targets


def arrow_column(values: np.ndarray):
    """`values` as `add_column` takes them fast: a 1-D array as it is (a list would be
    fingerprinted element by element), rows of a 2-D one as an Arrow fixed-size list."""
    if values.ndim == 1:
        return values
    import pyarrow as pa

    flat = pa.array(values.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def empty(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)  # a blank CSV cell: None or NaN


def filled_values(ds: datasets.Dataset, column: str, where: str) -> list:
    """The column's values; an SftError naming the rows whose value is empty."""
    values = column_values(ds, column)
    missing = [i for i, v in enumerate(values) if empty(v)]
    if missing:
        raise SftError(
            f"{where} has {len(missing)} empty label(s) in column '{column}' (the first in row "
            f"{missing[0] + 1}); fill or drop those rows"
        )
    return values


def refuse_unseen(unseen: list[str], names: list[str], where: str) -> None:
    """An SftError when a split holds labels outside `names` (train's, or the model's)."""
    if unseen:
        raise SftError(
            f"{where} has label(s) {unseen[:5]} that train never saw (train labels: {names}); "
            f"drop those rows or add training examples for them"
        )


def feature_kind(feature) -> str:
    """What a column holds, for an error: 'int64 values', 'List'..."""
    dtype = getattr(feature, "dtype", None)
    return f"{dtype} values" if dtype else type(feature).__name__
