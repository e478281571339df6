"""Reading a column of a `datasets.Dataset` fast: through Arrow, not row by row."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import datasets


def column_values(ds: datasets.Dataset, name: str) -> list:
    """A column's values as a list, read from Arrow at once: `ds[name]` is a lazy column that
    yields row by row, ~40x slower on hundreds of thousands of rows."""
    return ds.with_format("arrow")[name].to_pylist()


def iter_column(ds: datasets.Dataset, name: str, chunk: int = 1000) -> Iterator[Any]:
    """A column's values one by one, read from Arrow `chunk` rows at a time: as fast as
    `column_values`, without holding a column of embedded image or audio bytes at once."""
    for rows in ds.select_columns([name]).with_format("arrow").iter(batch_size=chunk):
        yield from rows.column(name).to_pylist()
