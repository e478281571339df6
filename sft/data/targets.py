"""What each row's target is, by `problem` (sft/problems/): a class id (single_label), a 0/1
vector over the label names (multi_label), or numbers (regression). `read_targets` checks every
split's targets, names them, and returns them as arrays for the LABELS column.

Where targets come from:
- single_label: `data.label_column`, one value per row;
- multi_label: `data.label_column` holding lists, or strings split at `data.label_separator`;
  or `data.label_columns`, one 0/1 column per label (the column names are the label names);
- regression: `data.label_column` (one number per row), or `data.label_columns` (several).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import datasets
import numpy as np

from sft.data.columns import column_values
from sft.errors import SftError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TargetSpec:
    problem: str = "single_label"
    column: str = "label"  # data.label_column
    columns: tuple[str, ...] = ()  # data.label_columns: one per label or target
    separator: str | None = None  # data.label_separator (multi_label strings)

    @property
    def sources(self) -> tuple[str, ...]:
        """The raw columns the targets are read from."""
        return self.columns or (self.column,)

    @property
    def key(self) -> str:
        return "data.label_columns" if self.columns else "data.label_column"


def read_targets(
    raw: datasets.DatasetDict, spec: TargetSpec, source: str
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Label (or target) names and, per split with targets, an array of them: int64 ids
    (single_label), float32 0/1 rows (multi_label) or float32 rows (regression). A split whose
    labels are all hidden (-1 or empty, as in GLUE's test splits) is left out, with a warning."""
    reader = {"single_label": _class_ids, "multi_label": _multi_hot, "regression": _numbers}
    names, encode = reader[spec.problem](raw["train"], spec, f"the train split of {source}")
    targets = {}
    for split, ds in raw.items():
        where = f"the {split} split of {source}"
        if split != "train" and _hidden(ds, spec):
            log.warning("ignoring the %s split of %s: it has no labels", split, source)
            continue
        targets[split] = encode(ds, where)
    return names, targets


def _hidden(ds: datasets.Dataset, spec: TargetSpec) -> bool:
    if spec.problem != "single_label" or spec.columns:
        return False
    return all(v is None or (isinstance(v, int) and v < 0) for v in column_values(ds, spec.column))


def arrow_column(values: np.ndarray):
    """`values` as `add_column` takes them fast: a 1-D array as it is (a list would be
    fingerprinted element by element), rows of a 2-D one as an Arrow fixed-size list."""
    if values.ndim == 1:
        return values
    import pyarrow as pa

    flat = pa.array(values.reshape(-1))
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def targets_for(ds: datasets.Dataset, spec: TargetSpec, names: list[str], where: str) -> np.ndarray:
    """A multi-label or regression split's targets for a model trained on `names` (labels or
    targets, in the model's order): as `read_targets` encodes them."""
    if spec.problem == "regression":
        if len(spec.sources) != len(names):
            raise SftError(
                f"the model predicts {len(names)} target(s) {names}, but {spec.key} names "
                f"{len(spec.sources)}: {list(spec.sources)}; name one column per target"
            )
        return _number_encoder(spec)(ds, where)
    if spec.columns:
        if list(spec.columns) != names:
            raise SftError(
                f"data.label_columns={list(spec.columns)} differ from the model's labels "
                f"{names}; name one 0/1 column per label, in that order"
            )
        return _indicator_columns(spec)(ds, where)
    return _hot_encoder(_label_sets(ds, spec, where), names)(ds, where)


def _empty(v) -> bool:
    return v is None or (isinstance(v, float) and v != v)  # a blank CSV cell: None or NaN


def _check_filled(ds: datasets.Dataset, column: str, where: str) -> list:
    """The column's values; an SftError naming the rows whose value is empty."""
    values = column_values(ds, column)
    empty = [i for i, v in enumerate(values) if _empty(v)]
    if empty:
        raise SftError(
            f"{where} has {len(empty)} empty label(s) in column '{column}' (the first in row "
            f"{empty[0] + 1}); fill or drop those rows"
        )
    return values


# -- single_label ---------------------------------------------------------------------------
def _class_ids(train: datasets.Dataset, spec: TargetSpec, where: str):
    """Class names: a `ClassLabel` column keeps its names; otherwise the sorted distinct train
    values (numbers sorted numerically), so the mapping is the same on every run."""
    feature = train.features[spec.column]
    values = _check_filled(train, spec.column, where)
    if isinstance(feature, datasets.ClassLabel):
        names = list(feature.names)

        def lookup(v):
            return v if isinstance(v, int) and 0 <= v < len(names) else None
    else:
        distinct = set(values)
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in distinct):
            ordered = sorted(distinct)
        else:
            ordered = sorted(distinct, key=str)
        names = [str(v) for v in ordered]
        index = {str(v): i for i, v in enumerate(ordered)}

        def lookup(v):
            return index.get(str(v))

    if len(names) < 2:
        raise SftError(
            f"{where} has {len(names)} distinct label(s) {names}; a classifier needs at least two"
        )

    def encode(ds: datasets.Dataset, where: str) -> np.ndarray:
        values = _check_filled(ds, spec.column, where)
        _refuse_unseen(sorted({str(v) for v in values if lookup(v) is None}), names, where)
        return np.array([lookup(v) for v in values], dtype=np.int64)

    return names, encode


def _refuse_unseen(unseen: list[str], names: list[str], where: str) -> None:
    if unseen:
        raise SftError(
            f"{where} has label(s) {unseen[:5]} that train never saw (train labels: {names}); "
            f"drop those rows or add training examples for them"
        )


# -- multi_label ----------------------------------------------------------------------------
def _multi_hot(train: datasets.Dataset, spec: TargetSpec, where: str):
    if spec.columns:
        return list(spec.columns), _indicator_columns(spec)
    parse = _label_sets(train, spec, where)
    names = sorted({label for labels in parse(train, where) for label in labels})
    if not names:
        raise SftError(
            f"{where} has no labels at all in column '{spec.column}': every row's label set is "
            f"empty; check data.label_column and data.label_separator"
        )
    return names, _hot_encoder(parse, names)


def _hot_encoder(parse, names: list[str]):
    index = {name: i for i, name in enumerate(names)}

    def encode(ds: datasets.Dataset, where: str) -> np.ndarray:
        sets = parse(ds, where)
        _refuse_unseen(sorted({x for labels in sets for x in labels} - set(index)), names, where)
        hot = np.zeros((len(sets), len(names)), dtype=np.float32)
        for row, labels in enumerate(sets):
            hot[row, [index[x] for x in labels]] = 1.0
        return hot

    return encode


def _label_sets(train: datasets.Dataset, spec: TargetSpec, where: str):
    """A function: dataset -> each row's set of label names (as strings)."""
    column, separator = spec.column, spec.separator
    feature = train.features[column]
    is_list = isinstance(feature, (datasets.Sequence, datasets.List, list, datasets.LargeList))
    if not is_list and separator is None:
        raise SftError(
            f"column '{column}' of {where} holds {_kind(feature)}, not lists of labels; for "
            f"multi_label give a list column, set data.label_separator=<the character between "
            f"labels, e.g. ','>, or give one 0/1 column per label with data.label_columns"
        )

    def parse(ds: datasets.Dataset, where: str) -> list[set[str]]:
        sets = []
        for row, value in enumerate(column_values(ds, column)):
            if _empty(value):
                sets.append(set())  # no labels: a row can have none
            elif isinstance(value, list):
                sets.append({str(v) for v in value if not _empty(v)})
            elif isinstance(value, str) and separator is not None:
                sets.append({part.strip() for part in value.split(separator) if part.strip()})
            else:
                raise SftError(
                    f"row {row + 1} of {where}, column '{column}': {value!r} is not a list of "
                    f"labels; give lists, or strings of labels joined by data.label_separator"
                )
        return sets

    return parse


def _indicator_columns(spec: TargetSpec):
    names = list(spec.columns)  # the label names

    def encode(ds: datasets.Dataset, where: str) -> np.ndarray:
        hot = np.zeros((len(ds), len(names)), dtype=np.float32)
        for j, column in enumerate(names):
            for row, value in enumerate(_check_filled(ds, column, where)):
                if value not in (0, 1):  # True and False compare equal to 1 and 0
                    raise SftError(
                        f"row {row + 1} of {where}, column '{column}': {value!r} is not 0 or 1; "
                        f"data.label_columns name one 0/1 column per label"
                    )
                hot[row, j] = float(value)
        return hot

    return encode


# -- regression -----------------------------------------------------------------------------
def _numbers(train: datasets.Dataset, spec: TargetSpec, where: str):
    return list(spec.sources), _number_encoder(spec)


def _number_encoder(spec: TargetSpec):
    names = list(spec.sources)

    def encode(ds: datasets.Dataset, where: str) -> np.ndarray:
        out = np.zeros((len(ds), len(names)), dtype=np.float32)
        for j, column in enumerate(names):
            for row, value in enumerate(_check_filled(ds, column, where)):
                out[row, j] = _number(value, row, column, where)
        return out

    return encode


def _number(value, row: int, column: str, where: str) -> float:
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise SftError(
            f"row {row + 1} of {where}, column '{column}': {value!r} is not a number; "
            f"regression targets must parse as floats (fix or drop the row)"
        ) from None
    if not np.isfinite(number):
        raise SftError(f"row {row + 1} of {where}, column '{column}': {value!r} is not finite")
    return number


def _kind(feature) -> str:
    dtype = getattr(feature, "dtype", None)
    return f"{dtype} values" if dtype else type(feature).__name__
