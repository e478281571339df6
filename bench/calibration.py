"""Calibration of finished runs, measured: no temperature, one temperature (what sft does), and
for multi-label one temperature per label, each fitted on the run's validation split and
measured on its test split.

    python bench/calibration.py RUN_DIR [RUN_DIR ...] [--out FILE]

The saved model carries its temperature T folded in: it is evaluated on both splits in one
process (sft.reporting.evaluation), and its logits times T are the uncalibrated model's. Prints
test ECE (15 bins), NLL and Brier score, and accuracy (single-label: no prediction moves) or
macro-F1 with the threshold tuned on validation for each (multi-label); writes them as JSON
with --out.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def per_label_temperatures(logits: np.ndarray, references: np.ndarray) -> torch.Tensor:
    """One T per column of multi-label logits, each minimising that label's BCE."""
    from sft.problems.calibration import fit_temperature

    def nll(j: int, scaled: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(
            scaled, torch.as_tensor(references[:, j], dtype=scaled.dtype)
        )

    return torch.tensor(
        [fit_temperature(logits[:, j], partial(nll, j)) for j in range(logits.shape[1])]
    )


def measure(run: Path) -> dict:
    from sft.reporting.evaluation import evaluate_saved

    metrics = json.loads((run / "metrics.json").read_text())
    saved_t = metrics.get("calibration_temperature", 1.0)
    outputs = {}
    for split in ("validation", "test"):
        saved = evaluate_saved(str(run), [], split, progress=False)
        evaluation = saved.evaluated.evaluation
        outputs[split] = dataclasses.replace(evaluation, logits=evaluation.logits * saved_t)
    problem = saved.problem
    validation, test = outputs["validation"], outputs["test"]
    methods = {"none": 1.0, "one temperature": problem.calibrated(validation)[1]}
    if problem.name == "multi_label":
        methods["one per label"] = per_label_temperatures(validation.logits, validation.references)
    rows = {}
    for name, t in methods.items():
        # Multi-label: the threshold tuned again on validation for each, as training does after
        # calibrating (single-label: no rule; no argmax moves).
        rule = problem.tune(problem.scaled(validation, t), problem.metrics[0])
        scaled = problem.apply(problem.scaled(test, t), rule)
        after = scaled.calibration["after"]
        rows[name] = {
            "ece": after["ece"], "nll": after["nll"], "brier": after["brier"],
            "score": scaled.scores[problem.metrics[0]] if problem.name != "single_label"
            else scaled.scores["accuracy"],
            "temperature": float(t) if np.ndim(t) == 0 else [round(float(x), 3) for x in t],
            **rule,
        }  # fmt: skip
    return {"run": str(run), "problem": problem.name, "saved_temperature": saved_t,
            "test_examples": len(test.references), "methods": rows}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    results = [measure(run) for run in args.runs]
    lines = []
    for r in results:
        lines += [f"\n{r['run']} ({r['problem']}, {r['test_examples']} test examples)",
                  f"{'method':<18}{'ECE':>8}{'NLL':>8}{'Brier':>8}{'score':>8}  T"]  # fmt: skip
        for name, m in r["methods"].items():
            t = m["temperature"]
            shown = f"{t:.3f}" if isinstance(t, float) else f"median {np.median(t):.3f}"
            scores = "".join(f"{m[k]:8.4f}" for k in ("ece", "nll", "brier", "score"))
            lines.append(f"{name:<18}{scores}  {shown}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
