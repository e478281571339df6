"""What a data file's bytes say before a reader parses it: its text encoding (and the message
when none of the given ones decodes it), whether it holds rows at all, and a header that names
a column twice."""

from __future__ import annotations

import codecs
import csv
from pathlib import Path

from sft.errors import SftError


def header_of(file: Path, encoding: str | None, sep: str) -> list[str]:
    """A CSV/TSV file's column names; an SftError if it names one twice (a reader would keep
    one of them, unsaid)."""
    with file.open(encoding=encoding, newline="") as f:
        header = next(csv.reader(f, delimiter=sep), [])
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise SftError(
            f"{file} names the column(s) {repeated} more than once in its header; rename or "
            f"drop the repeats"
        )
    return header


def refuse_other_columns(headers: dict[Path, list[str]], reference: Path) -> None:
    """An SftError naming a file whose columns differ from `reference`'s (the train file's):
    the splits of one data set are read as one table, and the reader's own error names no
    file or column."""
    expected = headers[reference]
    for file, header in headers.items():
        missing, extra = sorted(set(expected) - set(header)), sorted(set(header) - set(expected))
        if missing or extra:
            raise SftError(
                f"{file} has columns {header}, but {reference.name} has {expected} (missing: "
                f"{missing}, extra: {extra}); give every split file the same columns"
            )


def encoding_of(file: Path, encodings: list[str] | tuple[str, ...]) -> str | None:
    """The first of `encodings` that decodes all of `file` to text without NUL characters (a NUL
    means a binary file, or UTF-16 read as a one-byte encoding such as latin-1)."""
    for encoding in encodings:
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            with file.open("rb") as f:
                while chunk := f.read(1 << 20):
                    if "\x00" in decoder.decode(chunk):
                        break
                else:
                    decoder.decode(b"", final=True)
                    return encoding
        except UnicodeDecodeError:
            continue
    return None


def has_no_rows(file: Path, encoding: str | None) -> bool:
    """A CSV/TSV with a header alone, or a JSON(L) file with no records (read cheaply)."""
    if file.suffix == ".parquet":
        return False
    with file.open(encoding=encoding) as f:
        head = [line.encode() for line in (f.readline() for _ in range(2)) if line.strip()]
    if file.suffix in (".csv", ".tsv"):
        return len(head) < 2
    return not head or (
        file.suffix == ".json" and b"".join(h.strip() for h in head) in (b"[]", b"{}")
    )


def encoding_message(file: Path, encodings: list[str] | tuple[str, ...]) -> str:
    tried = ", ".join(encodings)
    with file.open("rb") as f:
        head = f.read(1 << 20)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return (
            f"{file} is UTF-16 text (it starts with a UTF-16 byte-order mark), not {tried}; "
            f"add utf-16 to data.encodings, e.g. data.encodings=[utf-8,utf-16], or re-save it "
            f"as UTF-8"
        )
    if b"\x00" in head:
        return (
            f"{file} is not {tried} text: it holds NUL bytes, so it is a binary file (or UTF-16 "
            f"without a byte-order mark); replace it with the text data file, or re-save it as "
            f"UTF-8"
        )
    try:
        codecs.getincrementaldecoder(encodings[0])().decode(head)  # a cut last char is fine
        detail = ""
    except UnicodeDecodeError as err:
        detail = f" (byte 0x{err.object[err.start]:02x} at position {err.start})"
    return (
        f"{file} is not valid {tried} text{detail}; re-save it as UTF-8, or list its encoding in "
        f"data.encodings, e.g. data.encodings=[utf-8,latin-1]"
    )
