"""Export a fine-tuned model to ONNX and check it: `python -m sft.export <run_dir> --onnx`.

torch.onnx's exporter (torch.export based; the older TorchScript one traced the attention mask
of transformers 5 models as a constant, and its logits disagreed) writes <run>/onnx/model.onnx
beside the model's config and processor. The export is traced on one sample batch and checked on
another of a different batch size and length with onnxruntime: the logits must match
PyTorch's, or the command fails. export.json records the largest difference.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sft import cli
from sft.errors import SftError, first_line
from sft.runs.directory import check_writable, strict_json, write_json

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # largest allowed |ONNX - PyTorch| in any logit, times the largest |logit| over 1


def export_onnx(source: str, output: Path | None = None, opset: int = 18) -> dict[str, Any]:
    """Export the model of a run (or model) directory to ONNX, check it; returns the report."""
    try:
        import onnxruntime
    except ImportError as err:
        raise SftError(
            "ONNX export needs onnx, onnxscript and onnxruntime: pip install -e .[export]"
        ) from err
    from sft.training.model import resolve

    if output is not None:
        check_writable(output, "--output")  # as sft.train checks output_dir, before the work
    found = resolve(source)
    model = found.load().eval()
    processor = found.load_processor()
    trace, check = (found.modality.sample(processor, n) for n in (2, 3))
    names = list(trace)
    out = output or (found.run.onnx if found.run is not None else Path("onnx"))
    out.mkdir(parents=True, exist_ok=True)
    dynamic = {
        name: {d: torch.export.Dim.DYNAMIC for d in range(trace[name].dim())
               if trace[name].shape[d] != check[name].shape[d]}
        for name in names
    }  # fmt: skip
    try:
        torch.onnx.export(
            _Logits(model, names).eval(),  # a new Module starts in training mode
            tuple(trace[n] for n in names),
            str(out / "model.onnx"),
            input_names=names,
            output_names=["logits"],
            dynamic_shapes=(tuple(dynamic[n] for n in names),),  # forward(*tensors)
            opset_version=opset,
            dynamo=True,
        )
    except torch.onnx.errors.OnnxExporterError as err:  # an operator or shape it cannot export
        raise SftError(f"torch.onnx could not export {found.ref}: {first_line(err)}") from err
    session = onnxruntime.InferenceSession(str(out / "model.onnx"))
    onnx_logits = session.run(None, {n: check[n].numpy() for n in names})[0]
    with torch.no_grad():
        torch_logits = model(**check).logits.numpy()
    difference = float(np.abs(onnx_logits - torch_logits).max())
    # Relative beyond 1: a regression model's outputs are values such as 2014.5, where float32
    # itself resolves only ~1e-4.
    tolerance = TOLERANCE * max(1.0, float(np.abs(torch_logits).max()))
    report = {"model": found.ref, "task": found.task, "opset": opset, "inputs": names,
              "max_abs_difference": difference, "tolerance": tolerance}  # fmt: skip
    if not difference <= tolerance:
        (out / "model.onnx").unlink()
        raise SftError(
            f"the ONNX model's logits differ from PyTorch's by up to {difference:.2e} (more than "
            f"{tolerance:.0e}); it was not kept"
        )
    shutil.copy2(Path(found.ref) / "config.json", out / "config.json")
    processor.save_pretrained(out)
    write_json(out / "export.json", report)
    log.info("exported %s to %s (max |ONNX - PyTorch| = %.1e)", found.ref, out, difference)
    return report


class _Logits(torch.nn.Module):
    """The classifier as a function of positional tensors, returning logits only."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits


def main(argv: list[str] | None = None) -> None:
    parser = cli.parser("sft.export", "Export a fine-tuned model and check it.")
    parser.add_argument("run_dir", help="run directory (or model directory)")
    parser.add_argument("--onnx", action="store_true", required=True, help="export to ONNX")
    parser.add_argument("--output", type=Path, help="default: <run_dir>/onnx")
    parser.add_argument("--opset", type=int, default=18)
    cli.run(parser, lambda a: strict_json(export_onnx(a.run_dir, a.output, a.opset)), argv)


if __name__ == "__main__":
    main()
