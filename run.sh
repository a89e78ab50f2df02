#!/usr/bin/env bash
# The whole pipeline on the embedded default data, stage after stage. Each stage reads the
# previous stage's files under out/ and writes its own; reading this file is reading the
# pipeline. Extra arguments go to every stage, e.g. `./run.sh` or `OUT=out/small ./run.sh`.
source "$(dirname "$0")/env.sh"
ensure_venv requirements.txt
PY=.venv/bin/python
OUT=${OUT:-out}

# 1. Collect, clean and deduplicate the corpus (downloads its sources once into ~/.cache/llmpipe).
$PY data/prepare.py --out-dir "$OUT/data"

# 2. Train the byte-level BPE tokenizer and encode the corpus into token shards.
$PY bpe.py --data-dir "$OUT/data" --out-dir "$OUT/tok"

# 3. Pretrain the tiny GPT on the shards (torchrun train.py ... for many GPUs: see README).
$PY train.py --data-dir "$OUT/tok" --out-dir "$OUT/pretrain"

echo "pipeline done: see $OUT/"
