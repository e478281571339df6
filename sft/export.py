"""Export a fine-tuned model to ONNX and check it: `python -m sft.export <run_dir> --onnx`.

torch.onnx's exporter (torch.export based; the older TorchScript one traced the attention mask
of transformers 5 models as a constant, and its logits disagreed) writes <run>/onnx/model.onnx
beside the model's config and processor. The export is traced on one sample batch and checked on
another of a different batch size and length with onnxruntime: the logits must match
PyTorch's, or the command fails. export.json records the largest difference.

With --quantize int8, onnxruntime's dynamic quantizer (int8 weights of the linear layers,
activations quantized on the fly; convolutions stay fp32) writes model.int8.onnx, gated on
accuracy: the fp32 and int8 models score the run's validation split (its metric, its tuned
rule, windows pooled as it trained), and an int8 model that loses more than --max-drop of it is
refused and not kept. export.json then holds both scores, sizes on disk and examples/s.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sft import cli
from sft.errors import SftError, first_line
from sft.problems.metrics import better
from sft.runs.directory import check_writable, strict_json, write_json

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # largest allowed |ONNX - PyTorch| in any logit, times the largest |logit| over 1


def export_onnx(
    source: str,
    output: Path | None = None,
    opset: int = 18,
    quantize: bool = False,
    max_drop: float = 0.01,
) -> dict[str, Any]:
    """Export the model of a run (or model) directory to ONNX, check it, and with `quantize`
    add the int8 model that passes the accuracy gate; returns the report."""
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
    if quantize and found.run is None:
        raise SftError(
            f"--quantize int8 needs a run directory: its validation split gates the accuracy, "
            f"and {source} is a bare model"
        )
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
    (out / "model.int8.onnx").unlink(missing_ok=True)  # an earlier export's: not of this model
    log.info("exported %s to %s (max |ONNX - PyTorch| = %.1e)", found.ref, out, difference)
    if quantize:
        report["int8"] = quantize_int8(found, model, out, names, max_drop)
    write_json(out / "export.json", report)
    if quantize and not report["int8"]["kept"]:
        gate = report["int8"]
        raise SftError(
            f"int8 loses {gate['drop']:.4f} of validation {gate['metric']} (fp32 "
            f"{gate['fp32']['validation']:.4f}, int8 {gate['int8']['validation']:.4f}), more "
            f"than --max-drop {max_drop}: it was not kept; {out}/model.onnx (fp32) was, and "
            f"export.json records both"
        )
    return report


def quantize_int8(found, model, out: Path, names: list[str], max_drop: float) -> dict[str, Any]:
    """model.int8.onnx beside `out`/model.onnx, kept only if its validation score is at most
    `max_drop` below the fp32 model's (`kept`); both scores, sizes and speeds."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    staged = out / "model.int8.partial.onnx"
    # The linear layers (MatMul, Gemm), as torch's dynamic quantization does: onnxruntime's
    # ConvInteger is slow on CPU, and it cannot quantize a convolution whose weight is computed
    # (wav2vec2's weight-normed positional convolution).
    quantize_dynamic(out / "model.onnx", staged, op_types_to_quantize=["MatMul", "Gemm"],
                     weight_type=QuantType.QInt8)  # fmt: skip
    try:
        metric, loader, pool, problem = _validation(found, model)
        rule = problem.saved_rule(model.config)
        fp32, int8 = (
            _onnx_score(path, names, loader, problem, rule, pool, metric)
            for path in (out / "model.onnx", staged)
        )
        drop = better(metric, fp32["validation"]) - better(metric, int8["validation"])
        kept = drop <= max_drop
        if kept:
            staged.rename(out / "model.int8.onnx")
    finally:
        staged.unlink(missing_ok=True)
    log.info("int8: validation %s %.4f (fp32 %.4f), %.1f MiB (fp32 %.1f), %.0f examples/s "
             "(fp32 %.0f)", metric, int8["validation"], fp32["validation"],
             int8["bytes"] / 2**20, fp32["bytes"] / 2**20, int8["examples_per_s"],
             fp32["examples_per_s"])  # fmt: skip
    return {"kept": kept, "metric": metric, "max_drop": max_drop, "drop": drop, "fp32": fp32,
            "int8": int8}  # fmt: skip


def _validation(found, model):
    """The run's metric, its validation batches (as training read them), how it pools windows,
    and the problem."""
    from sft import problems
    from sft.config import with_overrides
    from sft.data.loaders import eval_loader, load_data

    fixed = {"model": {"checkpoint": found.ref}, "output_dir": ""}
    cfg = with_overrides(found.run.config, [], fixed)
    problem = problems.of_model(model.config)
    data = load_data(found.modality, cfg.model, cfg.data, cfg.augment, cfg.seed, problem)
    metric = problem.metric(cfg.trainer.metric)
    metric = problem.metrics[0] if metric == "loss" else metric
    loader = eval_loader(data.encoded.validation, data.inputs, cfg.trainer.eval_batch_size)
    return metric, loader, cfg.data.pool, problem


def _onnx_score(path: Path, names, loader, problem, rule, pool, metric) -> dict[str, Any]:
    """`metric` of the ONNX model at `path` on `loader`'s examples, its size and speed."""
    import onnxruntime

    from sft.data.windows import DOCUMENT
    from sft.training.scoring import scored

    session = onnxruntime.InferenceSession(str(path))
    seconds = []  # reading and running the batches: scoring them is left out

    def batches():
        start = time.perf_counter()
        for batch in loader:
            outputs = session.run(None, {n: batch[n].numpy() for n in names})[0]
            yield torch.from_numpy(outputs), batch["labels"], batch.get(DOCUMENT)
        seconds.append(time.perf_counter() - start)

    evaluation = problem.apply(scored(problem, batches(), pool), rule)
    data = path.with_name(path.name + ".data")  # the exporter's external weights, if any
    size = path.stat().st_size + (data.stat().st_size if data.exists() else 0)
    return {"validation": evaluation.scores[metric], "bytes": size,
            "examples_per_s": len(evaluation.references) / seconds[0]}  # fmt: skip


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
    parser.add_argument("--quantize", choices=("int8",), help="add a dynamic int8 model")
    parser.add_argument(
        "--max-drop",
        type=float,
        default=0.01,
        help="the most of the run's validation metric int8 may lose (default 0.01: one point "
        "of accuracy or F1); a negative value demands that it gain",
    )
    cli.run(parser, _export, argv)


def _export(args) -> str:
    report = export_onnx(args.run_dir, args.output, args.opset, args.quantize == "int8",
                         args.max_drop)  # fmt: skip
    return strict_json(report)


if __name__ == "__main__":
    main()
