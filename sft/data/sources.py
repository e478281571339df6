"""Turn `data.path` into a raw `DatasetDict`, whatever shape the data arrives in.

Accepted, in the order they are tried:
- a single data file (.csv, .tsv, .json, .jsonl, .parquet): it becomes the train split;
- a `save_to_disk` directory;
- a directory of split files named train / validation (val, valid, dev) / test, optionally
  sharded (`train-00000-of-00002.parquet`);
- a directory with one sub-folder per class of .txt, image or audio files (optionally under
  train/, validation/, test/): text files give their contents, media files their paths;
- otherwise a hub dataset id, through `datasets.load_dataset` (the path a user online takes).
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

import datasets
from datasets.exceptions import DatasetsError

from sft.data.files import (
    encoding_message,
    encoding_of,
    has_no_rows,
    header_of,
    refuse_other_columns,
)
from sft.errors import SftError, first_line

log = logging.getLogger(__name__)

# File extension -> format; every format but tsv is also the name of its `datasets` builder.
FORMATS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# What a class folder may hold: file suffix -> kind of input.
MEDIA = {
    ".txt": "text",
    **dict.fromkeys([".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"], "image"),
    **dict.fromkeys([".wav", ".flac", ".ogg", ".aiff", ".aif"], "audio"),
}
# What `datasets.load_dataset` raises for data it cannot find or read: DatasetsError (it wraps
# the reader's own error in DatasetGenerationError), OSError (missing files, no such hub
# dataset, no network), ValueError (malformed CSV/JSON, a wrong configuration name).
READ_ERRORS = (DatasetsError, OSError, ValueError)
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


def load_raw(
    path: str,
    *,
    name: str | None = None,
    encodings: list[str] | tuple[str, ...] = ("utf-8",),
    input_column: str = "text",
    label_column: str = "label",
    input_is_path: bool = False,
) -> datasets.DatasetDict:
    """Load every split found at `path` (see the module docstring for the accepted shapes).

    Split names are normalised to train / validation / test. `input_column` and `label_column`
    name the columns built from class folders. With `input_is_path`, the input column of a data
    file holds file paths, and relative ones are taken from the data file's folder.
    """
    local = Path(path).expanduser()
    columns = (input_column, label_column)
    if local.is_file():
        if local.suffix.lower() not in FORMATS:
            raise SftError(
                f"data.path '{path}': {local.suffix or 'a file without a suffix'} is not a data "
                f"format sft reads; save it as {', '.join(FORMATS)} (from a spreadsheet: CSV)"
            )
        loaded = _load_files({"train": [local]}, encodings)
    elif local.is_dir():
        loaded = _load_dir(local, encodings, columns)
    elif path.startswith((".", "/", "~")) or local.suffix in FORMATS:
        raise SftError(f"data.path '{path}' does not exist; point data.path at a file or directory")
    else:
        return _load_hub(path, name)
    if input_is_path:
        base = local if local.is_dir() else local.parent
        loaded = _absolute_paths(loaded, input_column, base.resolve())
    return loaded


def _absolute_paths(loaded: datasets.DatasetDict, column: str, base: Path) -> datasets.DatasetDict:
    def resolve(batch: dict) -> dict:
        batch[column] = [
            v if not isinstance(v, str) or Path(v).is_absolute() else str(base / v)
            for v in batch[column]
        ]
        return batch

    def fix(ds: datasets.Dataset) -> datasets.Dataset:
        if column not in ds.column_names or not isinstance(ds.features[column], datasets.Value):
            return ds  # absent, or already an Image/Audio feature
        # pandas-read CSVs give large_string, which Arrow cannot cast to Image/Audio structs.
        return ds.map(resolve, batched=True).cast_column(column, datasets.Value("string"))

    return datasets.DatasetDict({split: fix(ds) for split, ds in loaded.items()})


def _load_dir(
    root: Path, encodings: list[str] | tuple[str, ...], columns: tuple[str, str]
) -> datasets.DatasetDict:
    if (root / "dataset_dict.json").exists() or (root / "state.json").exists():
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.Dataset):
            loaded = datasets.DatasetDict({"train": loaded})
        return _rename_splits(loaded, root)
    split_files = _split_files(root)
    if split_files:
        return _load_files(split_files, encodings)
    split_dirs = {
        SPLIT_NAMES[d.name.lower()]: d for d in _subdirs(root) if d.name.lower() in SPLIT_NAMES
    }
    if split_dirs:
        return datasets.DatasetDict(
            {split: _read_class_tree(d, encodings, columns) for split, d in split_dirs.items()}
        )
    if any(_kind(f) for d in _subdirs(root) for f in d.iterdir()):
        return datasets.DatasetDict({"train": _read_class_tree(root, encodings, columns)})
    raise SftError(
        f"data.path '{root}' holds no data sft can read: expected split files "
        f"(train/validation/test as {', '.join(FORMATS)}), a save_to_disk directory, "
        f"or one sub-folder per class of .txt, image or audio files"
    )


def _subdirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _split_files(root: Path) -> dict[str, list[Path]]:
    """Files like train.csv, test.jsonl or validation-00001-of-00002.parquet, grouped by split."""
    found: dict[str, list[Path]] = defaultdict(list)
    for file in sorted(root.iterdir()):
        if not file.is_file() or file.suffix not in FORMATS:
            continue
        stem = file.stem.lower().replace("_", "-").split("-")[0]
        if stem in SPLIT_NAMES:
            found[SPLIT_NAMES[stem]].append(file)
    return dict(found)


def _load_files(
    split_files: dict[str, list[Path]], encodings: list[str] | tuple[str, ...]
) -> datasets.DatasetDict:
    files = [f for group in split_files.values() for f in group]
    formats = {FORMATS[f.suffix] for f in files}
    if len(formats) > 1:
        suffixes = ", ".join(sorted({f.suffix for f in files}))
        raise SftError(f"data files mix formats ({suffixes}) in {files[0].parent}; use one format")
    builder = formats.pop()
    options: dict = {}
    if builder == "tsv":
        builder, options["sep"] = "csv", "\t"
    # Each file gets the first encoding of the list that decodes it: one directory may hold a
    # UTF-16 export beside UTF-8 files.
    by_encoding: dict[str | None, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    headers: dict[Path, list[str]] = {}
    for split, group in split_files.items():
        for file in group:
            encoding = None if builder == "parquet" else encoding_of(file, encodings)
            if builder != "parquet" and encoding is None:
                raise SftError(encoding_message(file, encodings))
            if has_no_rows(file, encoding):
                raise SftError(f"the {split} split of {file.parent} is empty ({file} has no rows)")
            if builder == "csv":
                headers[file] = header_of(file, encoding, options.get("sep", ","))
            by_encoding[encoding][split].append(str(file))
    if headers:
        reference = (split_files.get("train") or list(headers))[0]
        refuse_other_columns(headers, reference)
    parts = [
        _read_files(builder, data_files, {**options, **({"encoding": e} if e else {})})
        for e, data_files in by_encoding.items()
    ]
    return _merge(parts) if len(parts) > 1 else parts[0]


def _read_files(
    builder: str, data_files: dict[str, list[str]], options: dict
) -> datasets.DatasetDict:
    try:
        return datasets.load_dataset(builder, data_files=data_files, **options)
    except READ_ERRORS as err:
        files = [Path(f) for group in data_files.values() for f in group]
        # The reader's error names no file: read them one by one to find the culprit.
        culprit = next(
            (f for f in files if len(files) > 1 and _unreadable(builder, f, options)), None
        )
        where = culprit or _describe(files)
        raise SftError(
            f"could not read {where} as {builder} ({_root_cause(err)}); fix or replace the file"
        ) from err


def _unreadable(builder: str, file: Path, options: dict) -> bool:
    try:
        datasets.load_dataset(builder, data_files=str(file), **options)
    except READ_ERRORS:
        return True
    return False


def _merge(parts: list[datasets.DatasetDict]) -> datasets.DatasetDict:
    """One DatasetDict from several, a split's rows in the order of `parts`."""
    merged = {}
    for split in dict.fromkeys(s for part in parts for s in part):
        pieces = [part[split] for part in parts if split in part]
        try:
            merged[split] = datasets.concatenate_datasets(
                [pieces[0], *(p.cast(pieces[0].features) for p in pieces[1:])]
            )
        except ValueError as err:
            raise SftError(
                f"the {split} files differ in columns or types ({first_line(err)}); give them "
                f"the same columns"
            ) from err
    return datasets.DatasetDict(merged)


def _kind(file: Path) -> str | None:
    """'text', 'image' or 'audio' for a file a class folder may hold, else None."""
    if file.name.startswith("."):
        return None
    return MEDIA.get(file.suffix.lower())


def _read_class_tree(
    root: Path, encodings: list[str] | tuple[str, ...], columns: tuple[str, str]
) -> datasets.Dataset:
    """One example per file; the file's parent folder name is its label. Text files give their
    contents, image and audio files their absolute paths (decoded later, by the modality)."""
    input_column, label_column = columns
    inputs, labels, kinds = [], [], set()
    for class_dir in _subdirs(root):
        folder = class_dir.resolve()  # once per folder: resolving each file costs ~100 us
        with os.scandir(folder) as entries:  # file types from the listing: no stat per file
            files = sorted(folder / e.name for e in entries if e.is_file() and _kind(Path(e)))
        if not files:
            raise SftError(
                f"class folder '{class_dir}' has no .txt, image or audio files; add some or "
                f"remove it"
            )
        for file in files:
            kinds.add(_kind(file))
            if _kind(file) == "text":
                text = _decode(file.read_bytes(), encodings)
                if text is None:
                    raise SftError(encoding_message(file, encodings))
                inputs.append(text)
            else:
                inputs.append(str(file))
            labels.append(class_dir.name)
    if len(kinds) > 1:
        raise SftError(f"'{root}' mixes {' and '.join(sorted(kinds))} files; keep one kind")
    return datasets.Dataset.from_dict({input_column: inputs, label_column: labels})


def _decode(raw: bytes, encodings: list[str] | tuple[str, ...]) -> str | None:
    for encoding in encodings:
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    return None


def _load_hub(path: str, name: str | None) -> datasets.DatasetDict:
    try:
        loaded = datasets.load_dataset(path, name)
    except READ_ERRORS as err:
        raise SftError(
            f"data.path '{path}' is neither a local file or directory nor a dataset the hub "
            f"could serve ({_root_cause(err)}); check the path or hub id"
        ) from err
    return _rename_splits(loaded, path)


def _rename_splits(loaded: datasets.DatasetDict, source: Path | str) -> datasets.DatasetDict:
    renamed = {}
    for split, ds in loaded.items():
        canonical = SPLIT_NAMES.get(split.lower())
        if canonical is None:
            log.warning("ignoring split '%s' of %s (not train/validation/test)", split, source)
        elif canonical not in renamed:
            renamed[canonical] = ds
    return datasets.DatasetDict(renamed)


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None:
        err = err.__cause__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _describe(files: list[Path]) -> str:
    return str(files[0]) if len(files) == 1 else f"{files[0].parent}/ ({len(files)} files)"
