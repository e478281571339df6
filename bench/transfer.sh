#!/usr/bin/env bash
# Transfer learning, measured: a recipe on its converted pretrained checkpoint with each
# fine-tuning strategy, against the same architecture from random weights, same data and settings.
#   bench/transfer.sh RECIPE CONVERTER [CONVERT OPTIONS]   (make bench-images, make bench-speech)
#   RUNS="pretrained_lora scratch_full" bench/transfer.sh ...   a subset of the runs
# -> bench/results/RECIPE/<run>/metrics.json and a summary table. Run on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
RECIPE=$1 CONVERTER=$2; shift 2
OUT=bench/results/$RECIPE
UNTRAINED=.cache/models/$CONVERTER-untrained$(printf '%s' "$*" | tr -d ' -')
ALL="pretrained_full pretrained_head_only pretrained_top_k pretrained_lora pretrained_layer_decay
scratch_full scratch_full_lr10"
RUNS=${RUNS:-$ALL}
[ -f $UNTRAINED/config.json ] || $PY -m sft.convert "$CONVERTER" "$@" --untrained --out $UNTRAINED
# A frozen body or adapters take larger steps than full fine-tuning: 10x the recipe's lr.
LR=$($PY -m sft.train recipe=$RECIPE --cfg job --package optimizer | sed -n 's/^lr: //p')
LR10=$($PY -c "print($LR * 10)")
declare -A ARGS=(
  [pretrained_full]=""
  [pretrained_head_only]="finetune=head_only augment=none optimizer.lr=$LR10"  # features cached
  [pretrained_top_k]="finetune=top_k"
  [pretrained_lora]="finetune=lora optimizer.lr=$LR10"
  [pretrained_layer_decay]="optimizer.layer_decay=0.8"
  [scratch_full]="model.checkpoint=$PWD/$UNTRAINED"
  [scratch_full_lr10]="model.checkpoint=$PWD/$UNTRAINED optimizer.lr=$LR10"  # fair to scratch
)
mkdir -p $OUT
for run in $RUNS; do
  # shellcheck disable=SC2086  # ARGS holds several overrides
  $PY -m sft.train recipe=$RECIPE output_dir=$OUT/$run resume=never trainer.progress=false \
    logger=none ${ARGS[$run]} > /dev/null 2> $OUT/$run.log
done
$PY - "$OUT" $RUNS <<'PY'
import json, sys
from pathlib import Path
print("| run | test accuracy | test macro-F1 | training s | feature cache s |")
print("|---|---|---|---|---|")
for run in sys.argv[2:]:
    m = json.loads((Path(sys.argv[1]) / run / "metrics.json").read_text())
    cache = m.get("feature_cache_seconds")
    print(f"| {run} | {m['accuracy']:.3f} | {m['f1']:.3f} | {m['train_seconds']:.0f} | "
          f"{'-' if cache is None else f'{cache:.0f}'} |")
PY
