"""Benchmark: fine-tuning strategies on the offline bert_news default (all-MiniLM-L6-v2 on BBC
News), each a full `python -m sft.train` run. Writes bench/results/strategies.md and .json.

    python bench/strategies.py [--only "full;head_only"] [extra overrides...]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

NO_CACHE = "finetune.cache_features=false"  # frozen-feature caching is on where it applies

# name -> overrides on top of recipe=bert_news (lr per strategy: frozen bodies and adapters
# take larger steps than full fine-tuning).
STRATEGIES = {
    "full": [],
    "head_only": ["finetune=head_only", "optimizer.lr=2e-3"],
    "head_only (uncached)": ["finetune=head_only", "optimizer.lr=2e-3", NO_CACHE],
    "head_only, 10 epochs": ["finetune=head_only", "optimizer.lr=2e-3", "trainer.epochs=10"],
    "head_only, 10 epochs (uncached)": [
        "finetune=head_only",
        "optimizer.lr=2e-3",
        "trainer.epochs=10",
        NO_CACHE,
    ],
    "top_k=2": ["finetune=top_k", "finetune.k=2", "optimizer.lr=2e-4"],
    "top_k=2 (uncached)": ["finetune=top_k", "finetune.k=2", "optimizer.lr=2e-4", NO_CACHE],
    "lora (r=8, query/value)": ["finetune=lora", "optimizer.lr=1e-3"],
    "full + layer_decay=0.8": ["optimizer.layer_decay=0.8", "optimizer.lr=2e-4"],
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="", help="strategy names separated by ;")
    args, extra = parser.parse_known_args()
    chosen = [s for s in STRATEGIES if not args.only or s in args.only.split(";")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    saved = RESULTS / "strategies.json"
    earlier = json.loads(saved.read_text()) if saved.exists() else []
    rows = []
    for name in chosen:
        run_dir = RESULTS / "runs" / re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        command = [
            sys.executable,
            "-m",
            "sft.train",
            "recipe=bert_news",
            f"output_dir={run_dir}",
            "trainer.progress=false",
            *STRATEGIES[name],
            *extra,
        ]
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        wall = time.perf_counter() - start
        metrics = json.loads((run_dir / "metrics.json").read_text())
        groups = json.loads((run_dir / "param_groups.json").read_text())
        rows.append(
            {
                "strategy": name,
                "overrides": " ".join(STRATEGIES[name]),
                "accuracy": metrics["accuracy"],
                "f1": metrics["f1"],
                # Caching the frozen features happens before the loop: count it in.
                "train_seconds": metrics["train_seconds"]
                + metrics.get("feature_cache_seconds", 0.0),
                "cache_seconds": metrics.get("feature_cache_seconds", 0.0),
                "wall_seconds": round(wall, 1),
                "trainable_params": groups["trainable_params"],
            }
        )
        print(json.dumps(rows[-1]), flush=True)  # noqa: T201 (a benchmark script's report)
        # Keep what finished so far, and earlier results of strategies not rerun now.
        order = {name: i for i, name in enumerate(STRATEGIES)}
        merged = {r["strategy"]: r for r in earlier} | {r["strategy"]: r for r in rows}
        rows_all = sorted(merged.values(), key=lambda r: order.get(r["strategy"], len(order)))
        saved.write_text(json.dumps(rows_all, indent=2) + "\n")
    rows = json.loads(saved.read_text())
    lines = [
        "| strategy | overrides | test accuracy | test macro-F1 | training time "
        "| of which caching | trainable params |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['strategy']} | `{r['overrides'] or '(recipe defaults)'}` | {r['accuracy']:.3f} | "
        f"{r['f1']:.3f} | {r['train_seconds']:.0f} s | {r.get('cache_seconds', 0):.0f} s | "
        f"{r['trainable_params']:,} |"
        for r in rows
    ]
    (RESULTS / "strategies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))  # noqa: T201


if __name__ == "__main__":
    main()
