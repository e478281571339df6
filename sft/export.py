"""Export a fine-tuned model to ONNX and check it: `python -m sft.export <run_dir> --onnx`.

torch.onnx's exporter (torch.export based; the older TorchScript one traced the attention mask
of transformers 5 models as a constant, and its logits disagreed) writes <run>/onnx/model.onnx
beside the model's config and processor. The export is traced on one sample batch and checked on
another of a different batch size and length with onnxruntime: the logits must match
PyTorch's, or the command fails. export.json records the largest difference.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sft.errors import SftError, exit_with

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # largest allowed |ONNX - PyTorch| in any logit


def export_onnx(source: str, output: Path | None = None, opset: int = 18) -> dict[str, Any]:
    """Export the model of a run (or model) directory to ONNX, check it; returns the report."""
    try:
        import onnxruntime
    except ImportError as err:
        raise SftError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install -e .[export]"
        ) from err
    from sft.data.inputs import processor_for
    from sft.model import AUTO_CLASSES, resolve

    found = resolve(source)
    model = AUTO_CLASSES[found.task].from_pretrained(found.ref).eval()
    processor = processor_for(found.task, found.ref)
    trace, check = (_sample(found.modality, processor, n) for n in (2, 3))
    names = list(trace)
    out = output or (Path(source) / "onnx" if Path(source, "model").is_dir() else Path("onnx"))
    out.mkdir(parents=True, exist_ok=True)
    dynamic = {
        name: {d: torch.export.Dim.DYNAMIC for d in range(trace[name].dim())
               if trace[name].shape[d] != check[name].shape[d]}
        for name in names
    }  # fmt: skip
    try:
        torch.onnx.export(
            _Logits(model, names),
            tuple(trace[n] for n in names),
            str(out / "model.onnx"),
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=(tuple(dynamic[n] for n in names),),  # forward(*tensors)
            opset_version=opset,
            dynamo=True,
        )
    except Exception as err:
        raise SftError(
            f"torch.onnx could not export {found.ref}: {type(err).__name__}: {err}"
        ) from err
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    onnx_logits = session.run(None, {n: check[n].numpy() for n in names})[0]
    with torch.no_grad():
        torch_logits = model(**check).logits.numpy()
    difference = float(np.abs(onnx_logits - torch_logits).max())
    report = {"model": found.ref, "task": found.task, "opset": opset, "inputs": names,
              "max_abs_difference": difference, "tolerance": TOLERANCE}  # fmt: skip
    if not difference <= TOLERANCE:
        (out / "model.onnx").unlink()
        raise SftError(
            f"the ONNX model's logits differ from PyTorch's by up to {difference:.2e} (more than "
            f"{TOLERANCE:.0e}); it was not kept"
        )
    shutil.copy2(Path(found.ref) / "config.json", out / "config.json")
    processor.save_pretrained(out)
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("exported %s to %s (max |ONNX - PyTorch| = %.1e)", found.ref, out, difference)
    return report


class _Logits(torch.nn.Module):
    """The classifier as a function of positional tensors, returning logits only."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits


def _sample(modality: str, processor, n: int) -> dict[str, torch.Tensor]:
    """A batch of `n` inputs; batches of different n also differ in length where lengths vary."""
    if modality == "text":
        texts = [" ".join(["example"] * (3 + 4 * i)) for i in range(n)]
        return dict(processor(texts, padding=True, return_tensors="pt"))
    if modality == "image":
        from PIL import Image

        rng = np.random.default_rng(n)
        images = [
            Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(n)
        ]
        return dict(processor(images, return_tensors="pt"))
    rate = int(processor.sampling_rate)
    rng = np.random.default_rng(n)
    clips = [
        0.1 * rng.standard_normal(rate // 2 + 800 * i * n).astype(np.float32) for i in range(n)
    ]
    padding = "max_length" if hasattr(processor, "n_samples") else "longest"
    return dict(processor(clips, sampling_rate=rate, padding=padding, return_tensors="pt"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m sft.export", description="Export a fine-tuned model and check it."
    )
    parser.add_argument("run_dir", help="run directory (or model directory)")
    parser.add_argument("--onnx", action="store_true", required=True, help="export to ONNX")
    parser.add_argument("--output", type=Path, help="default: <run_dir>/onnx")
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = export_onnx(args.run_dir, args.output, args.opset)
    except SftError as err:
        exit_with(err)
    print(json.dumps(report))  # noqa: T201 (the command's answer)


if __name__ == "__main__":
    main()
