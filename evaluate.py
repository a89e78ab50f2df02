"""Evaluate checkpoints on held-out text and standard benchmarks; gate deployments on the result.

A model is judged before it is deployed and watched for regressions after. This stage scores
any checkpoint directory (pretrain now; sft, ppo and quantized models later) the way the field
scores models, so the same script can be trusted on a real model even while ours, tiny and
trained for minutes, score near chance:

    held-out text   validation loss and bits per byte (bpe.py's val.bin)
    likelihood      MMLU (5-shot), ARC-Easy, ARC-Challenge, HellaSwag, PIQA, TruthfulQA MC1/MC2:
                    each choice is scored by log P(choice | context) under the model; the model
                    "answers" with the most likely choice (acc), or the most likely per character
                    (acc_norm, so long answers are not penalised for their length)
    generation      GSM8K (greedy, exact match of the final number) and HumanEval (n samples per
                    problem, run in sandbox.py, pass@k with the unbiased estimator)

Prompt formats (--format). The harness' format is plain text: the prompt starts a document,
as pretraining data does, and the answer continues it. A chat model (meta.json kind chat, and the
later kinds made from one) is asked the way it was trained to be asked: in the chat format the
benchmark's prompt (few-shot examples and all) is one user turn, rendered by the one chat
template (tokenizer.render_prompt), and the answer is the assistant's turn:
    mc, mc2   log P(choice | <|endoftext|><|user|> context <|end|><|assistant|>), the choice without
              its leading space (it starts the turn), acc_norm per character of what was scored
    GSM8K     greedy until <|end|>, then cut at the task's stops as in the harness' format
    HumanEval always the harness' format: it completes a function body, which is not a turn
    val       always plain text (bits per byte of the validation documents)
--format auto picks chat for every kind but base; every score records the format it was made in
("format") and the report marks it, since a change of format alone moves scores.

Every score sits beside its chance level and its centred value (score - chance) / (1 - chance),
so "0.26 on MMLU" reads as what it is: chance, and beside its standard error ("{metric}_stderr";
the report's +- is 1.96 of it): the harness' for benchmarks, over documents for bits per byte.
Each benchmark also gets a contamination check: the fraction of its items sharing a 13-word
sequence with the training split of the corpus. And every checkpoint answers measure.PANEL's ten
fixed prompts greedily in the chat layout (results.json's "panel", report.md's Panel section):
the guard against a metric that lies. report_card.py writes report.md and scores.png.

Reads:  <ckpt>/model.pt, tokenizer.json, meta.json (any stage), out/tok/val.bin (bpe.py),
        out/data/corpus.jsonl (data/prepare.py, for contamination), registry archives
        (benchmarks.py), benchmarks_data/truthfulqa/TruthfulQA.csv (shipped, Apache-2.0)
Writes: out/eval/results.json, report.md, scores.png, meta.json

Run:
    python evaluate.py --ckpt out/pretrain out/sft --limit 200  # run.sh's report card, about 5 minutes on 2 cores
    python evaluate.py --ckpt out/pretrain out/sft --limit 0    # full benchmarks, side by side
    python evaluate.py --tasks mmlu,gsm8k,truthfulqa_mc2 --truthfulqa-csv ''   # '': TruthfulQA unavailable
    python evaluate.py --ckpt out/pretrain out/sft --format harness   # both in the base's format
    python evaluate.py compare out/eval_base/results.json out/eval/results.json --max-drop 0.02

References: lm-evaluation-harness (Gao et al. 2023) for formats and metrics; Chen et al. 2021
(HumanEval, pass@k); Brown et al. 2020 App. C (13-gram contamination); the benchmarks' papers
are cited in benchmarks.py.

Not included: few-shot examples as earlier turns of the conversation (the chat format puts the
harness' whole prompt into one user turn, so both formats see the same words), a system prompt,
multi-GPU sharding of the items, and the red-team suites (a later stage of this script).
"""

import argparse
import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import benchmarks
import measure
from common import StageError, hash_inputs, pick_device, run_main, write_json, write_meta
from data.contamination import contamination
from gate import compare, format_with_interval, stderr_of
from model import bits_per_byte, load_checkpoint, next_token_loss
from report_card import plot_scores, run_name, write_report
from training import autocast, check_device
from tokenizer import load_token_dir

FORMAT, VERSION = "llmpipe-eval", 1
TASK_NAMES = ["val", *benchmarks.TASKS]
FORMATS = ("auto", "harness", "chat")
# TruthfulQA's CSV ships with the project (Apache-2.0, its LICENSE beside it): no registry carries it
TRUTHFULQA_CSV = Path(__file__).resolve().parent / "benchmarks_data" / "truthfulqa" / "TruthfulQA.csv"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # what to evaluate
    p.add_argument("--ckpt", nargs="+", default=["out/pretrain"],
                   help="checkpoint directories; several give a side-by-side report")
    p.add_argument("--tasks", default="all",
                   help=f"comma-separated, or 'all': {', '.join(TASK_NAMES)}")
    p.add_argument("--limit", type=int, default=0,
                   help="score this many items per benchmark, a seeded sample (0 = all)")
    p.add_argument("--limit-seed", type=int, default=0, help="seed of the --limit sample")
    p.add_argument("--format", choices=FORMATS, default="auto",
                   help="prompt format: harness (plain text), chat (the prompt as a user turn), or auto: chat for "
                        "every checkpoint kind but base (HumanEval and bits per byte are always plain text)")
    # data
    p.add_argument("--data-dir", default="out/tok", help="bpe.py output: val.bin for bits per byte")
    p.add_argument("--val-tokens", type=int, default=0, help="validation tokens to score (0 = all)")
    p.add_argument("--corpus", default="out/data/corpus.jsonl",
                   help="corpus whose train split is checked for contamination ('' = skip the check)")
    p.add_argument("--truthfulqa-csv", default=str(TRUTHFULQA_CSV),
                   help="path to TruthfulQA.csv (default: the project's copy; '' = TruthfulQA is reported "
                        "as unavailable)")
    # generation
    p.add_argument("--max-new-tokens", type=int, default=256,
                   help="tokens generated per GSM8K / HumanEval answer at most (and at most half the context)")
    p.add_argument("--samples", type=int, default=1,
                   help="HumanEval samples per problem (n of pass@k); 1 = greedy")
    p.add_argument("--temperature", type=float, default=0.8, help="HumanEval sampling temperature when --samples > 1")
    p.add_argument("--top-p", type=float, default=0.95, help="HumanEval nucleus sampling when --samples > 1")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per HumanEval program in the sandbox")
    # running
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, mps or cpu")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--out-dir", default="out/eval", help="where results.json, report.md and scores.png go")
    # the regression gate, a subcommand (without one, evaluate.py evaluates the --ckpt checkpoints)
    sub = p.add_subparsers(dest="command", title="subcommands", description="none: evaluate the --ckpt checkpoints")
    compare_p = sub.add_parser("compare", help="exit 1 if a candidate's scores regressed against a baseline's",
                          description="Exit 1 if CANDIDATE is worse than BASELINE by more than --max-drop.")
    compare_p.add_argument("baseline", help="results.json (or its directory) of the baseline; path#LABEL picks a checkpoint")
    compare_p.add_argument("candidate", help="results.json (or its directory) of the candidate")
    compare_p.add_argument("--max-drop", type=float, default=0.02,
                      help="largest allowed drop of a score (absolute, 0.02 = 2 points) or rise of bits per byte")
    args = p.parse_args(argv)
    if args.command == "compare":
        return args
    args.tasks = TASK_NAMES if args.tasks == "all" else [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASK_NAMES]
    if unknown:
        p.error(f"unknown benchmark {', '.join(map(repr, unknown))}; choose from {', '.join(TASK_NAMES)}")
    if len(set(args.ckpt)) != len(args.ckpt):
        p.error("--ckpt lists a checkpoint twice")
    if args.limit < 0 or args.samples < 1 or args.batch_size < 1 or args.max_new_tokens < 1:
        p.error("--limit must be >= 0; --samples, --batch-size and --max-new-tokens >= 1")
    return args


# ----------------------------------------------------------------------------- the model's side

@torch.no_grad()
def loglikelihoods(model, requests, batch_size, device):
    """sum_i log P(cont_i | ctx, cont_<i) for each (ctx_ids, cont_ids) request.

    Sequences longer than the block size keep their end (left truncation, as the harness
    does): the continuation is scored on as much context as fits; a continuation longer than
    the block itself is scored on its last block_size tokens (the harness would slice past
    the start there). Requests with the same input (the four " A".." D" of an MMLU question)
    share one forward pass, and inputs are batched longest first so a batch holds similar
    lengths (little padding). Padding goes on the right, where the causal mask keeps it from
    touching the real positions.
    """
    block = model.config.block_size
    rows = {}                              # input ids -> [(request index, targets), ...]
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            raise ValueError(f"request {i} has an empty continuation")
        ids = (ctx + cont)[-(block + 1):]
        rows.setdefault(tuple(ids[:-1]), []).append((i, ids[-min(len(cont), block):]))
    inputs = sorted(rows, key=len, reverse=True)
    out = [0.0] * len(requests)
    for start in tqdm(range(0, len(inputs), batch_size), desc="score", unit="batch", mininterval=1, leave=False):
        chunk = inputs[start:start + batch_size]
        x = torch.zeros(len(chunk), len(chunk[0]), dtype=torch.long)
        for r, inp in enumerate(chunk):
            x[r, :len(inp)] = torch.tensor(inp)
        with autocast(device):
            logits = model(x.to(device))                           # (B, T, V)
        for r, inp in enumerate(chunk):
            for i, targets in rows[inp]:
                n = len(targets)
                # position t predicts token t + 1: the continuation's n tokens are predicted
                # by the last n input positions
                logprobs = torch.log_softmax(logits[r, len(inp) - n:len(inp)].float(), dim=-1)  # (n, V)
                out[i] = logprobs.gather(1, torch.tensor(targets, device=logprobs.device)[:, None]).sum().item()
    return out


def prompt_format(name, ckpt_kind, choice="auto"):
    """The prompt format a benchmark is scored in for a checkpoint of meta.json kind
    `ckpt_kind`: "harness" or "chat" as --format says (auto: chat for every kind but base,
    since SFT and the stages after it trained the model to answer user turns), except that
    HumanEval (it completes a function body, not a turn) and bits per byte (plain validation
    text) are always the harness' plain text."""
    if name == "val" or benchmarks.TASKS[name].kind == "code":
        return "harness"
    if choice == "auto":
        return "harness" if ckpt_kind == "base" else "chat"
    return choice


def user_turn(tokenizer, text):
    """A benchmark's prompt as the chat format asks it: one user turn, then <|assistant|>."""
    return tokenizer.render_prompt([{"role": "user", "content": text.strip()}])


def choice_requests(tokenizer, items, fmt):
    """The (context ids, continuation ids) of every choice of every item, item after item.
    harness: the context starts a document (<|endoftext|>, as every training shard document
    does) and the choice continues it (benchmarks.encode_pair); chat: the context is a user
    turn and the choice, without its leading space, is what the assistant's turn starts with."""
    eot = tokenizer.special("<|endoftext|>")
    requests = []
    for item in items:
        turn = user_turn(tokenizer, item["context"]) if fmt == "chat" else None
        for choice in item["choices"]:
            if fmt == "chat":
                requests.append((turn, tokenizer.encode_ordinary(choice.strip())))
            else:
                ctx, cont = benchmarks.encode_pair(tokenizer, item["context"], choice)
                requests.append(([eot] + ctx, cont))
    return requests


@torch.no_grad()
def complete(model, tokenizer, prompts, stops, max_new_tokens, batch_size, temperature=0.0,
             top_p=1.0, seed=0, fmt="harness"):
    """The model's continuation of each prompt, cut at the first stop sequence.

    harness: each prompt starts a document (<|endoftext|> first, as in the training shards) and
    the model writes until <|endoftext|>; chat: each prompt is a user turn (user_turn) and the
    model writes until it closes its turn with <|end|> (or <|endoftext|>). Either way the prompt
    keeps its last block_size - max_new_tokens tokens. temperature 0 = greedy.
    """
    stop_tokens = {tokenizer.special("<|endoftext|>")}
    if fmt == "chat":
        stop_tokens.add(tokenizer.special("<|end|>"))
    max_new = min(max_new_tokens, model.config.block_size // 2)
    ids = [(user_turn(tokenizer, p) if fmt == "chat" else tokenizer.encode_document(p))
           [-(model.config.block_size - max_new):] for p in prompts]
    new = measure.generate(model, ids, max_new, temperature, stop_tokens, seed, batch_size, top_p)
    return [benchmarks.cut_at_stop(tokenizer.decode([t for t in tokens if t not in stop_tokens]), stops)
            for tokens in new]


def validation_tokens(tokenizer, data_dir, max_tokens):
    """The validation split as ids of the checkpoint's tokenizer. If the shards were made by
    another tokenizer, their text is decoded and encoded again: bits per byte compare models
    whatever their vocabularies, on the very same bytes."""
    tok_data, meta = load_token_dir(data_dir)
    val = np.memmap(Path(data_dir) / "val.bin", dtype=meta["dtype"], mode="r")
    if tok_data.sha256() != tokenizer.sha256():
        text = tok_data.decode(val.tolist())               # documents, each ending in <|endoftext|>
        eot = tokenizer.special("<|endoftext|>")
        val = np.array([t for doc in text.split("<|endoftext|>") if doc
                        for t in tokenizer.encode_ordinary(doc) + [eot]])
    return np.asarray(val[:max_tokens] if max_tokens else val, dtype=np.int64)


def document_of(val, eot):
    """The document index of every position of the split: documents end with <|endoftext|>,
    which belongs to the document it ends."""
    ends = np.cumsum(val == eot)                                  # ends[p]: documents ended by p
    return np.concatenate([[0], ends[:-1]])


@torch.no_grad()
def validation_bpb(model, tokenizer, val, batch_size, device):
    """Loss per token and bits per byte over non-overlapping block_size windows of the split,
    with their standard errors.

    Both are ratios (summed nats over summed tokens or bytes) and the split is a sample of
    documents: the stderr is the ratio estimator's (benchmarks.ratio_stderr) over documents.
    Windows would be more units but not independent ones (a document's windows share its topic
    and style): they would understate the noise. A split of few documents gets a wide interval.
    """
    block = model.config.block_size
    n_windows = (len(val) - 1) // block
    if n_windows < 1:
        raise StageError(f"the validation split has {len(val)} tokens, fewer than one window of {block + 1}")
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.long)
    docs = document_of(val, tokenizer.special("<|endoftext|>"))
    n_docs = int(docs[n_windows * block]) + 1               # documents the windows' targets reach
    nats, n_bytes, loss_sum, n_tokens = (np.zeros(n_docs) for _ in range(4))
    for start in tqdm(range(0, n_windows, batch_size), desc="val", unit="batch", mininterval=1, leave=False):
        w = np.arange(start, min(start + batch_size, n_windows))[:, None] * block + np.arange(block + 1)  # (B, block+1)
        batch = torch.from_numpy(val[w]).to(device)
        x, y = batch[:, :-1], batch[:, 1:]
        with autocast(device):
            logits = model(x)                                     # (B, block, V)
        # each target position's document: the sums go per document, for the stderr
        target_docs = torch.from_numpy(docs[w[:, 1:]]).to(device)     # (B, block)
        for d in target_docs.unique().tolist():
            mask = target_docs == d
            seg_logits, seg_y = logits[mask][None], y[mask][None]     # (1, tokens of d, V), (1, tokens of d)
            n, b = bits_per_byte(seg_logits, seg_y, byte_lengths)
            nats[d], n_bytes[d] = nats[d] + n, n_bytes[d] + b
            loss_sum[d] += next_token_loss(seg_logits, seg_y).item() * seg_y.numel()
            n_tokens[d] += seg_y.numel()
    ln2 = math.log(2)
    return {"loss": loss_sum.sum() / n_tokens.sum(), "loss_stderr": benchmarks.ratio_stderr(loss_sum, n_tokens),
            "bpb": nats.sum() / (ln2 * n_bytes.sum()), "bpb_stderr": benchmarks.ratio_stderr(nats / ln2, n_bytes),
            "tokens": int(n_tokens.sum()), "documents": int((n_bytes > 0).sum())}


# ----------------------------------------------------------------------------- one benchmark

def score_task(name, items, model, tokenizer, args, device, fmt="harness"):
    """Scores of one benchmark's items under one model: {metric: value, ..., "chance"}, the
    metrics being those its benchmarks.TASKS row lists, scored as its kind says, in the prompt
    format `fmt` (prompt_format: "harness" or "chat"; code is always scored in the harness')."""
    task = benchmarks.TASKS[name]
    if task.kind in ("mc", "mc2"):
        if fmt == "chat":      # acc_norm divides by the characters scored: the choice without its space
            items = [{**it, "choices": [c.strip() for c in it["choices"]]} for it in items]
        # every choice of every item is one request
        flat = iter(loglikelihoods(model, choice_requests(tokenizer, items, fmt), args.batch_size, device))
        lls = [[next(flat) for _ in item["choices"]] for item in items]
        score = benchmarks.score_multiple_choice if task.kind == "mc" else benchmarks.score_mc2
        scores = score(items, lls)
    elif task.kind == "gen":
        completions = complete(model, tokenizer, [it["prompt"] for it in items], benchmarks.GSM8K_STOPS,
                               args.max_new_tokens, args.batch_size, fmt=fmt)
        scores = benchmarks.score_exact_match(items, completions)
    elif task.kind == "code":
        # n samples per problem, greedy when n = 1
        n = args.samples
        temperature, top_p = (0.0, 1.0) if n == 1 else (args.temperature, args.top_p)
        texts = complete(model, tokenizer, [p["prompt"] for p in items for _ in range(n)],
                         benchmarks.HUMANEVAL_STOPS, args.max_new_tokens, args.batch_size,
                         temperature, top_p, args.seed)
        completions = {p["task_id"]: texts[j * n:(j + 1) * n] for j, p in enumerate(items)}
        scores, _ = benchmarks.score_humaneval(items, completions, ks=(1, 10, 100), timeout=args.timeout)
        scores["chance"] = 0.0
    return {m: scores[m] for m in (*task.metrics, *(f"{m}_stderr" for m in task.metrics), "chance") if m in scores}


def read_train_texts(corpus):
    with open(corpus, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            if doc["split"] == "train":
                yield doc["text"]


def check_contamination(all_items, corpus):
    """{benchmark: contamination summary} over all items of each benchmark (not only the
    --limit sample), in one pass over the corpus' training split. Items are keyed by
    (benchmark, item id); the examples are written "benchmark/id"."""
    texts = {(name, item["id"]): item["text"] for name, items in all_items.items() for item in items}
    result = contamination(tqdm(read_train_texts(corpus), desc="contamination", unit="doc",
                                mininterval=1, leave=False), texts)
    out = {}
    for name, items in all_items.items():
        hit = [f"{name}/{item_id}" for bench, item_id in result["ids"] if bench == name]
        checked = len(items) - sum(bench == name for bench, _ in result["short_ids"])
        out[name] = {"items": len(items), "checked": checked, "contaminated": len(hit),
                     "fraction": len(hit) / checked if checked else 0.0, "examples": hit[:5]}
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    if args.command == "compare":
        return compare(args.baseline, args.candidate, args.max_drop)
    del args.command                   # what results.json and meta.json record: the evaluation's flags
    t0 = time.time()
    device = check_device(pick_device(args.device))

    # 1. the checkpoints, loaded (and checked) before any benchmark work
    models = {}
    for path in args.ckpt:
        model, tokenizer, meta = load_checkpoint(path, device=device)
        models[path] = (model.eval(), tokenizer, meta)
    # a checkpoint whose weights hold NaN or inf (a diverged run) is reported broken, not
    # scored: its scores would be noise, and its NaNs would stop the other checkpoints' run
    broken = {path: "its weights hold NaN or inf" for path, (model, _, _) in models.items()
              if not all(torch.isfinite(p).all() for p in model.parameters())}
    for path, why in broken.items():
        print(f"{path}: broken, {why}; not scored")

    # 2. the benchmarks' items: all of them for the contamination check, a seeded sample to score
    tasks, all_items, scored = {}, {}, {}
    for name in args.tasks:
        if name == "val":
            tasks["val"] = {"primary": "bpb"}
            continue
        try:
            all_items[name] = benchmarks.load_task(name, args.truthfulqa_csv)
            gaps = benchmarks.humaneval_sandbox() if benchmarks.TASKS[name].kind == "code" else None
        except benchmarks.Unavailable as e:
            tasks[name] = {"unavailable": str(e)}
            print(f"{name}: unavailable ({e})")
            continue
        scored[name] = benchmarks.select(all_items[name], args.limit, args.limit_seed)
        print(f"{name}: {len(all_items[name]):,} items read from its archive, {len(scored[name]):,} to score", flush=True)
        ids = "\n".join(str(it["id"]) for it in scored[name])
        tasks[name] = {"primary": benchmarks.TASKS[name].metrics[0], "n": len(scored[name]), "n_total": len(all_items[name]),
                       "items_sha256": hashlib.sha256(ids.encode()).hexdigest()}
        if gaps is not None:
            tasks[name]["sandbox_unenforced"] = gaps
    if args.corpus and all_items:
        if not Path(args.corpus).is_file():
            raise StageError(f"no corpus at {args.corpus} for the contamination check; run data/prepare.py "
                             f"or pass --corpus ''")
        for name, summary in check_contamination(all_items, args.corpus).items():
            tasks[name]["contamination"] = summary

    # 3. score every checkpoint on every benchmark
    checkpoints = {}
    for path, (model, tokenizer, meta) in models.items():
        scores = {}
        for name in args.tasks if path not in broken else ():
            fmt = prompt_format(name, meta["kind"], args.format)          # recorded beside the scores
            if name == "val":
                val = validation_tokens(tokenizer, args.data_dir, args.val_tokens)
                scores["val"] = {**validation_bpb(model, tokenizer, val, args.batch_size, device), "format": fmt}
                # the text's hash, not the ids': checkpoints with different tokenizers scored on
                # the same bytes compare (bits per byte is what makes them comparable)
                text_sha = hashlib.sha256(tokenizer.decode_bytes(val.tolist())).hexdigest()
                tasks["val"].update(n=scores["val"]["tokens"], n_total=scores["val"]["tokens"], items_sha256=text_sha)
            elif name in scored:
                t = time.time()
                try:
                    s = scores[name] = {**score_task(name, scored[name], model, tokenizer, args, device, fmt),
                                        "format": fmt}
                except benchmarks.Unavailable as e:         # the sandbox broke: not scored, said
                    print(f"{path}  {name}: not scored ({e})")
                    continue
                primary = tasks[name]["primary"]
                print(f"{path}  {name:15s} {primary} {format_with_interval(s[primary], stderr_of(s, primary))} "
                      f"(chance {s['chance']:.3f}, n {len(scored[name])}, {fmt}, {time.time() - t:.0f} s)")
        if "val" in scores:
            v = scores["val"]
            print(f"{path}  val             bpb {format_with_interval(v['bpb'], stderr_of(v, 'bpb'))} "
                  f"(loss {v['loss']:.3f})")
        checkpoints[path] = {"name": run_name(path, meta), "params": model.num_params(),
                             "tokenizer_sha256": tokenizer.sha256(), "stage": meta.get("script"), "kind": meta["kind"],
                             "scores": scores}
        if path in broken:
            checkpoints[path]["broken"] = broken[path]
        else:                # the panel: the same ten prompts, answered greedily by every checkpoint
            checkpoints[path]["panel"] = measure.panel_answers(model, tokenizer)

    # 4. results.json, report.md, scores.png and meta.json (last: it says the rest is complete)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = {"format": FORMAT, "version": VERSION, "args": vars(args), "tasks": tasks,
               "panel": [{"category": c, "prompt": text} for c, text in measure.PANEL],
               "checkpoints": checkpoints, "seconds": time.time() - t0}
    write_json(out_dir / "results.json", results)
    write_report(out_dir, results)
    plot_scores(out_dir / "scores.png", results)
    # which TruthfulQA was scored, by its hash
    tqa = {"truthfulqa_csv": args.truthfulqa_csv} if {"truthfulqa_mc1", "truthfulqa_mc2"} & scored.keys() else {}
    inputs = hash_inputs({**{f"{p}/model.pt": Path(p) / "model.pt" for p in args.ckpt}, **tqa})
    write_meta(out_dir, FORMAT, VERSION, "evaluate.py", vars(args),
               metrics={p: c["scores"] for p, c in checkpoints.items()}, inputs=inputs)
    print(f"evaluation: {len(checkpoints)} checkpoint(s), {len(scored) + ('val' in tasks)} benchmarks "
          f"in {time.time() - t0:.0f} s -> {out_dir / 'report.md'}")


if __name__ == "__main__":
    run_main(main)
