#!/usr/bin/env bash
# The whole pipeline on the embedded default data, stage after stage. Each stage reads the
# previous stage's files under out/ and writes its own; reading this file is reading the
# pipeline. Settings come from the environment, e.g. `OUT=out/small ./run.sh` or `EVAL_LIMIT=0 ./run.sh`.
source "$(dirname "$0")/env.sh"
ensure_venv requirements.txt
PY=.venv/bin/python
OUT=${OUT:-out}

stage() {   # usage: stage NAME command ...: run it, then say how long it took
    local name=$1 start=$SECONDS
    shift
    "$@"
    echo "== $name: $((SECONDS - start)) s"
}

# 1. Collect, clean and deduplicate the corpus (downloads its sources once into ~/.cache/llmpipe).
stage data $PY data/prepare.py --out-dir "$OUT/data"

# 2. Train the byte-level BPE tokenizer and encode the corpus into token shards.
stage tokenizer $PY bpe.py --data-dir "$OUT/data" --out-dir "$OUT/tok"

# 3. Pretrain the tiny GPT on the shards (torchrun train.py ... for many GPUs: see README).
stage pretrain $PY train.py --data-dir "$OUT/tok" --out-dir "$OUT/pretrain"

# 4. Supervised fine-tuning: the base model learns to answer a user's turn in the chat layout and
#    to stop, from demonstrations (the task library's skills, the registry's conversations); it
#    prints and keeps its held-out figures, parent against SFT model (sft.png). Then
#    `python chat.py $OUT/sft` talks to it.
stage sft $PY sft.py --init "$OUT/pretrain" --out-dir "$OUT/sft"

# 5. Rankings and the reward model: the SFT model answers the reward splits' prompts 4 times, the
#    simulated rater (the task library's gold score) ranks the answers, and a reward model learns
#    the rankings; it prints its held-out pair accuracy (calibration.png). `python rate.py
#    $OUT/reward/samples.jsonl --out mine.jsonl` ranks them by hand instead.
stage reward $PY reward.py --init "$OUT/sft" --out-dir "$OUT/reward"

# 6. RLHF: PPO raises the reward model's score while a KL penalty keeps the policy near the SFT
#    model; it prints SFT against PPO on held-out prompts (gold score, refusals, the skill, KL)
#    and draws ppo.png and the training curves (scores.png, kl.png, policy.png, value.png).
stage ppo $PY ppo.py --init "$OUT/sft" --reward-model "$OUT/reward" --out-dir "$OUT/ppo"

# 7. The report card of the three checkpoints side by side: held-out bits per byte, the benchmarks (a
#    seeded sample of EVAL_LIMIT items each; EVAL_LIMIT=0 scores them all; the SFT model is asked
#    in its chat layout), each benchmark's contamination of the corpus, and the fixed panel of
#    prompts every checkpoint answers. TruthfulQA is read from the copy shipped in benchmarks_data/.
stage evaluate $PY evaluate.py --ckpt "$OUT/pretrain" "$OUT/sft" "$OUT/ppo" --data-dir "$OUT/tok" --corpus "$OUT/data/corpus.jsonl" \
    --out-dir "$OUT/eval" --limit "${EVAL_LIMIT:-200}"

echo "pipeline done in $SECONDS s: see $OUT/"
