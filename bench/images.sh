#!/usr/bin/env bash
# Transfer learning, measured: EfficientNet-Lite0 pretrained on ImageNet (converted from its
# package) against the same architecture from random weights, on the recipe's Fashion-MNIST
# (1,000 training photos, 1,000 test), same settings. Run on an otherwise idle machine:
#   make bench-images          -> bench/results/images/<run>/metrics.json and a summary table
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
OUT=bench/results/images
UNTRAINED=.cache/models/efficientnet-lite0-untrained
$PY -m sft.convert efficientnet-lite0 >/dev/null
[ -f $UNTRAINED/config.json ] || $PY -m sft.convert efficientnet-lite0 --untrained --out $UNTRAINED
run() {
  local name=$1; shift
  $PY -m sft.train recipe=efficientnet_fashion_mnist output_dir=$OUT/$name resume=never \
    trainer.progress=false logger=none "$@" > /dev/null 2> $OUT.$name.log
}
mkdir -p $OUT
run pretrained_full
run pretrained_head_only finetune=head_only
run scratch_full model.checkpoint=$PWD/$UNTRAINED
$PY - "$OUT" <<'PY'
import json, sys
from pathlib import Path
print("| run | test accuracy | test macro-F1 | training s | feature cache s |")
print("|---|---|---|---|---|")
for run in ("pretrained_full", "pretrained_head_only", "scratch_full"):
    m = json.loads((Path(sys.argv[1]) / run / "metrics.json").read_text())
    print(f"| {run} | {m['accuracy']:.3f} | {m['f1']:.3f} | {m['train_seconds']:.0f} | "
          f"{m.get('feature_cache_seconds', '-')} |")
PY
