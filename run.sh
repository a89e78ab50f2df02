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

# 4. The report card: held-out bits per byte, the benchmarks (a seeded sample of EVAL_LIMIT items
#    each; EVAL_LIMIT=0 scores them all) and each benchmark's contamination of the corpus.
#    TruthfulQA needs a TruthfulQA.csv (TRUTHFULQA_CSV); without one it is reported unavailable.
TRUTHFULQA_CSV=${TRUTHFULQA_CSV:-../shared/data/truthfulqa/TruthfulQA.csv}
[ -f "$TRUTHFULQA_CSV" ] || TRUTHFULQA_CSV=""
$PY evaluate.py --ckpt "$OUT/pretrain" --data-dir "$OUT/tok" --corpus "$OUT/data/corpus.jsonl" \
    --out-dir "$OUT/eval" --limit "${EVAL_LIMIT:-200}" --truthfulqa-csv "$TRUTHFULQA_CSV"

echo "pipeline done: see $OUT/"
