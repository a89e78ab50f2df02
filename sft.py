"""Stage 4: supervised fine-tuning (SFT): the base model learns to answer a user's turn in the
chat layout, and to stop when it is done, from demonstrations of the behaviour we want.

    the data      conversations, each rendered by render_chat into ids and a mask that is 1
                  only on what the assistant writes (its content and its closing <|end|>):
                    compare, harmful, benign   the task library's skills (tasks.py), from its
                                  training split (--split, sft_train): the checked skill, the
                                  refusal of a harmful request, the answer to its look-alike
                    chatterbot, triviaqa, nq_open, squad, coqa, math   the registry's
                                  demonstrations (demos.py), each sharing a 13-word sequence
                                  with a scored benchmark dropped and counted
                    user          --data FILE.jsonl, a user's own {"messages": [...]} lines
                  every conversation has the split of its id (tasks.split_of): each source
                  trains on --split (a user's data on every training split) and its sft_eval
                  part is held out for the figures below
    the mixture   each conversation drawn picks its source by --mix weight, then an example of
                  it uniformly: a small source is not drowned by a large one, and the three
                  skills are drawn equally (a probe showed that is what makes them learnable)
    packing       a step's rows are filled with whole conversations, first fit: each goes into
                  the first row with room for it, until one fits in no row; what is left of a
                  row is padding that carries no loss. A conversation longer than the
                  block is cut after its last assistant turn that fits; one whose first answer
                  does not fit is dropped and counted. A conversation sees the ones packed
                  before it in its row, as packed documents do in pretraining; each starts with
                  <|endoftext|>, which the base model learned as "a new document begins"
    the loss      cross-entropy on the supervised positions only (elsewhere the target is
                  IGNORE_INDEX), averaged over every supervised token of the step:
                      L = sum over supervised t of -log p(x_t+1 | x_<=t) / (supervised tokens)
                  so a micro-batch weighs by its supervised tokens, and one without any adds 0
    for step s:   lr(s) (warm-up, cosine); the step's rows, a pure function of (seed, s), so a
                  resumed run or any number of processes sees the same data; forward, backward,
                  clip, AdamW; every --eval-every steps, held-out bits per byte; every
                  --ckpt-every steps and at the end, the training state (--resume continues
                  from it bit for bit); at the end, the checkpoint
    before/after  on held-out data, the parent model against the SFT model (measure.py):
                  bits per byte of the assistant's content per source (<|end|> excluded); the
                  compare skill's accuracy (the parent also few-shot in plain text, so the
                  gain is not only the layout); refusal on harmful prompts and on their benign
                  look-alikes; the share of answers ending in <|end|> within the length limit;
                  every rate with n and a Wilson interval, at temperature 1 and greedy

The optimizer, schedule, clipping, DDP, the training state and the log are the engine's
(training.py), as in train.py.

Reads:  out/pretrain (--init: a base or chat checkpoint, model.load_checkpoint), the registry's
        demonstrations (demos.py), the task library (tasks.py), --data FILE.jsonl
Writes: out/sft/model.pt, tokenizer.json, meta.json (kind "chat", its parent by hash, the
        before/after figures and the mixture), prompts.jsonl (the pool with its splits, by
        hash in meta.json), train_state.pt, log.jsonl, loss.png, lr.png, sft.png

Run:
    python sft.py                                          # run.sh's tiny run, about 100 s on 2 cores
    python sft.py --data mine.jsonl --mix user=1           # only your demonstrations
    python sft.py --data mine.jsonl --mix user=2,compare=1,harmful=1,benign=1
    torchrun --standalone --nproc_per_node=8 sft.py --init out/pretrain --batch-rows 64

References: Ouyang et al. 2022 (InstructGPT, SFT on demonstrations); Touvron et al. 2023
(Llama 2: loss on the answer only, packed); nanochat's chat_sft; the engine's in training.py.

Not included: a block-diagonal attention mask between packed conversations, dropout,
LoRA (the whole model is fine-tuned: it is small).
"""

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import demos
import measure
import tasks
import training
from benchmarks import TASKS
from common import StageError, check_flags, check_same_run, hash_inputs, run_main, save_figure, sha256_file, check_out_dir
from data.contamination import benchmark_ngrams
from model import FLOPS_FORMULA, IGNORE_INDEX, flops_per_token, load_checkpoint, save_checkpoint

SKILLS = ("compare", "harmful", "benign")
# run.sh's tiny run: mostly the skills, with a little open chat and trivia. Measured on the tiny
# base (150 steps): the skills alone reach 0.84 on compare at temperature 1; registry sources at
# a third of the supervised tokens drop it to 0.12 (they compete for 2 minutes of a 1.9M-parameter
# model), and MATH, SQuAD and CoQA cost the most tokens per example (CoQA's stories do not fit
# the 256-token block at all). Give them weight on a larger model: --mix squad=1,math=1,...
DEFAULT_MIX = {"compare": 6, "harmful": 1.5, "benign": 1, "chatterbot": 0.3, "triviaqa": 0.15, "nq_open": 0.15}
ALL_SOURCES = ("compare", "harmful", "benign", *demos.SOURCES, "user")
CHAT_TOKENS = ("<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>")
TRUTHFULQA_CSV = Path(__file__).resolve().parent / "benchmarks_data" / "truthfulqa" / "TruthfulQA.csv"
CURVES = {"loss": [("train", "loss"), ("held-out bpb", "val_bpb")], "lr": [("learning rate", "lr")]}
RUN_FLAGS = ("mix", "split", "max_steps", "batch_rows", "lr", "min_lr_frac", "warmup_steps", "weight_decay",
             "grad_clip", "seed")


def parse_args(argv=None):
    p = training.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="out/pretrain", help="the checkpoint to fine-tune (base or chat)")
    p.add_argument("--out-dir", default="out/sft", help="checkpoint directory")
    p.add_argument("--data", default="", help="your own demonstrations: JSON Lines of {\"messages\": [...]}")
    p.add_argument("--mix", default="", help="source=weight,... (sources: " + ", ".join(ALL_SOURCES) +
                   "); default: " + ",".join(f"{k}={v}" for k, v in DEFAULT_MIX.items()) + " (+ user=3 with --data)")
    p.add_argument("--split", default="sft_train", help="the task library's split to train on")
    p.add_argument("--resume", action="store_true", help="continue from --out-dir/train_state.pt")
    p.add_argument("--stop-after", type=int, default=0, help="end after step N (resume later); 0 = run to --max-steps")
    p.add_argument("--max-steps", type=int, default=220, help="optimizer steps (run.sh: 220, about 100 s with the measurements)")
    p.add_argument("--batch-rows", type=int, default=8, help="rows of block-size tokens per step, all processes")
    p.add_argument("--micro-batch", type=int, default=8, help="rows per forward pass per process")
    p.add_argument("--lr", type=float, default=5e-3, help="peak learning rate (5e-3 beat 3e-3 and 1e-2 on the tiny run)")
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    p.add_argument("--warmup-steps", type=int, default=10, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.0, help="decoupled weight decay (matrices only)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global gradient norm limit; 0 = off")
    p.add_argument("--eval-every", type=int, default=50, help="steps between held-out bpb; 0 = only at the end")
    p.add_argument("--ckpt-every", type=int, default=50, help="steps between training states (for --resume); 0 = only at the end")
    p.add_argument("--eval-conversations", type=int, default=48, help="held-out conversations per source")
    p.add_argument("--eval-prompts", type=int, default=0, help="held-out task prompts per category; 0 = all")
    p.add_argument("--max-new-tokens", type=int, default=48, help="the answers' length limit")
    p.add_argument("--benchmarks", default="all", help="the scored benchmarks demonstrations are checked against "
                   "(13-gram overlap), comma-separated; all = every one evaluate.py scores")
    p.add_argument("--device", default="auto", help="cuda, mps or cpu; auto picks in that order")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto", help="autocast precision")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process; 0 = torch's default")
    p.add_argument("--seed", type=int, default=1337, help="data order")
    args = p.parse_args(argv)
    check_flags(p, args, {**dict.fromkeys(("max_steps", "batch_rows", "micro_batch", "eval_conversations",
                                           "max_new_tokens"), 1),
                          **dict.fromkeys(("stop_after", "eval_every", "ckpt_every", "eval_prompts", "warmup_steps",
                                           "threads"), 0)},
                positive=("lr",), nonnegative=("min_lr_frac", "weight_decay", "grad_clip"))
    args.benchmarks = list(TASKS) if args.benchmarks == "all" else [b for b in args.benchmarks.split(",") if b]
    if unknown := [b for b in args.benchmarks if b not in TASKS]:
        p.error(f"--benchmarks: unknown {', '.join(unknown)}; choose from {', '.join(TASKS)}")
    try:
        tasks.require_train_split(args.split)
        args.mix = parse_mix(args.mix, bool(args.data))
    except StageError as e:
        p.error(str(e))
    world = int(os.environ.get("WORLD_SIZE", 1))         # torchrun's, checked before any process group starts
    if args.batch_rows % world:
        p.error(f"--batch-rows {args.batch_rows} does not split evenly over {world} processes")
    return args


def parse_mix(text, have_user):
    """{source: weight} from "source=weight,...", or the default."""
    if not text:
        return {**DEFAULT_MIX, **({"user": 3.0} if have_user else {})}
    mix = {}
    for part in text.split(","):
        name, _, weight = part.partition("=")
        name = name.strip()
        if name not in ALL_SOURCES:
            raise StageError(f"--mix: unknown source {name!r}; choose from {', '.join(ALL_SOURCES)}")
        try:
            mix[name] = float(weight)
        except ValueError:
            raise StageError(f"--mix: {part!r} is not source=weight") from None
        if not (math.isfinite(mix[name]) and mix[name] >= 0):
            raise StageError(f"--mix: the weight of {name} must be a number >= 0")
    if "user" in mix and not have_user:
        raise StageError("--mix names user but no --data file is given")
    if not any(mix.values()):
        raise StageError("--mix: every weight is 0; give at least one source a weight")
    return {k: v for k, v in mix.items() if v > 0}


# ----------------------------------------------------------------------------- the data

def skill_conversations(pool):
    """The task library's prompts as conversations: the user's prompt, the demonstrated answer."""
    return [{"id": f"{p['category']}:{p['id']}", "source": p["category"], "split": p["split"],
             "messages": [{"role": "user", "content": p["text"]},
                          {"role": "assistant", "content": tasks.demonstration(p, i)}]}
            for i, p in enumerate(pool)]


def fit_to_block(ids, mask, end_id, width):
    """(ids, mask) cut after the last assistant turn that ends within `width` tokens, or None
    if even the first answer does not end there."""
    if len(ids) <= width:
        return ids, mask
    cut = max((i + 1 for i in range(width) if mask[i] and ids[i] == end_id), default=0)
    return (ids[:cut], mask[:cut]) if cut else None


def tokenize(convs, tok, width):
    """(rendered [(ids, mask)], {"cut": n, "too_long": n}) of conversations, each made to fit
    `width` tokens (fit_to_block)."""
    end = tok.special("<|end|>")
    rows, counts = [], {"cut": 0, "too_long": 0}
    for c in convs:
        ids, mask = tok.render_chat(c["messages"])
        fitted = fit_to_block(ids, mask, end, width)
        if fitted is None:
            counts["too_long"] += 1
        else:
            counts["cut"] += len(fitted[0]) < len(ids)
            rows.append(fitted)
    return rows, counts


def pack(draws, n_rows, width, pad_id):
    """Fill n_rows rows of `width` tokens with whole conversations from the iterator `draws`
    of (source, ids, mask), first fit: each goes into the first row with room for it (a long
    one into an empty row, so none is ever skipped), until one fits in no row. Returns (x, y,
    used): inputs and targets (n_rows, width - 1), the targets IGNORE_INDEX wherever the mask
    is 0 (prompts, padding), and [(row, source, ids, mask)] in the order they were placed."""
    ids_rows, mask_rows, used = [[] for _ in range(n_rows)], [[] for _ in range(n_rows)], []
    for source, ids, mask in draws:
        row = next((r for r in range(n_rows) if len(ids_rows[r]) + len(ids) <= width), None)
        if row is None:
            break
        ids_rows[row] += ids
        mask_rows[row] += mask
        used.append((row, source, ids, mask))
    grid = torch.full((n_rows, width), pad_id, dtype=torch.long)
    keep = torch.zeros(n_rows, width, dtype=torch.bool)
    for i, (ids, mask) in enumerate(zip(ids_rows, mask_rows)):
        grid[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        keep[i, :len(mask)] = torch.tensor(mask, dtype=torch.bool)
    x, y = grid[:, :-1], grid[:, 1:].clone()
    y[~keep[:, 1:]] = IGNORE_INDEX                  # only what the assistant writes carries loss
    return x, y, used


def draws_of(train, mix, seed, step):
    """An endless stream of (source, ids, mask): the source by --mix weight, then one of its
    conversations uniformly; a pure function of (seed, step)."""
    rng = np.random.default_rng([seed, step])
    names = [s for s in mix if train.get(s)]
    p = np.array([mix[s] for s in names], dtype=np.float64)
    p /= p.sum()
    while True:
        source = names[rng.choice(len(names), p=p)]
        ids, mask = train[source][rng.integers(len(train[source]))]
        yield source, ids, mask


def load_data(args, tok, width):
    """({source: [(ids, mask)]} to train on, {source: [conversation]} held out, the mixture
    report), every source decontaminated against the scored benchmarks."""
    pool = tasks.prompt_pool()
    convs = {}
    for c in skill_conversations(pool):
        convs.setdefault(c["source"], []).append(c)
    registry = [s for s in demos.SOURCES if s in args.mix]
    convs.update(demos.load_demonstrations(registry) if registry else {})
    if args.data:
        convs["user"] = demos.read_user_demonstrations(args.data)
    # the 13-gram index of the scored benchmarks, if any source needs checking against it
    index = benchmark_ngrams(args.benchmarks, TRUTHFULQA_CSV)[0] if set(convs) - set(SKILLS) else {}
    train, held_out, report = {}, {}, {}
    end = tok.special("<|end|>")
    for source, items in convs.items():
        # a user's own data trains on every training split (it is theirs to spend), the rest on
        # --split; the sft_eval part is held out. Only those two parts are checked and rendered.
        splits = tasks.TRAIN_SPLITS if source == "user" else (args.split,)
        split = {c["id"]: c.get("split") or tasks.split_of(c["id"]) for c in items}
        used = [c for c in items if split[c["id"]] in (*splits, "sft_eval")]
        kept, dropped = (used, {}) if source in SKILLS else demos.decontaminate(used, index)
        mine = [c for c in kept if split[c["id"]] in splits]
        held_out[source] = [c for c in kept if split[c["id"]] == "sft_eval"          # whose first answer fits
                            and fit_to_block(*tok.render_chat(c["messages"]), end, width)][:args.eval_conversations]
        rows, counts = tokenize(mine, tok, width) if source in args.mix else ([], {"cut": 0, "too_long": 0})
        report[source] = {"examples": len(items), "contaminated": dropped, "train_split": len(mine), **counts,
                          "train": len(rows), "held_out": len(held_out[source]), "weight": args.mix.get(source, 0)}
        if source in args.mix:
            train[source] = rows
    if args.data and not train["user"]:
        r = report["user"]
        raise StageError(f"{args.data}: nothing left to train on after filtering: of its {r['examples']} "
                         f"conversations {r['train_split']} are in a training split and clean, "
                         f"{sum(r['contaminated'].values())} share 13 words with a benchmark, {r['too_long']} have "
                         f"a first answer beyond the {width}-token block; give more, or shorter, conversations")
    if not any(train.values()):
        raise StageError("no conversation left to train on; check --mix and --data")
    return train, held_out, report, pool


# ----------------------------------------------------------------------------- the step

def train_step(model, opt, x, y, n_supervised, micro_batch, ctx, grad_clip, rt):
    """One optimizer step on this process's rows (x, y), in micro-batches of `micro_batch`
    rows; n_supervised: the supervised targets of the whole step, all processes together.

    Each micro-batch's mean loss is weighed by its share of the step's supervised tokens,
    so the accumulated gradient is that of the mean over all of them (the docstring's L);
    DDP averages the gradients over the processes, hence the factor world. Returns (L, the
    gradient norm before clipping); the optimizer steps only if both are finite."""
    loss_sum = 0.0
    starts = range(0, len(x), micro_batch)
    for j, start in enumerate(starts):
        xb, yb = x[start:start + micro_batch], y[start:start + micro_batch]
        with training.grad_sync(model, sync=j == len(starts) - 1), ctx:
            loss = model(xb, yb, supervised_only=True)     # mean over its supervised tokens (0 if none)
        part = loss * (int((yb != IGNORE_INDEX).sum()) * rt.world / max(n_supervised, 1))
        part.backward()
        loss_sum += part.item() / rt.world
    norm = training.clip_grad_norm(model.parameters(), grad_clip)
    loss = training.mean_over_processes(loss_sum, rt) * rt.world
    if math.isfinite(loss) and torch.isfinite(norm):
        opt.step()
    opt.zero_grad()
    return loss, norm


# ----------------------------------------------------------------------------- the figures

def figures(model, tok, held_out, eval_prompts, shots, max_new, parent=False):
    """What SFT changes, on held-out data (see the docstring): bpb per source, behaviour."""
    model.eval()
    bpb = {s: measure.assistant_bpb(model, tok, convs) for s, convs in held_out.items() if convs}
    out = {"bpb": bpb, "behaviour": measure.behaviour(model, tok, eval_prompts, shots if parent else None,
                                                      max_new_tokens=max_new)}
    model.train()
    return out


def plot(path, before, after):
    """sft.png: bits per byte per source, and the rates at temperature 1 with their Wilson
    intervals, parent against SFT model."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
    sources = [s for s in after["bpb"] if after["bpb"][s]["bpb"] is not None]
    xs = np.arange(len(sources))
    a1.bar(xs - 0.2, [before["bpb"][s]["bpb"] for s in sources], 0.4, label="parent")
    a1.bar(xs + 0.2, [after["bpb"][s]["bpb"] for s in sources], 0.4, label="SFT")
    a1.set_xticks(xs, sources, rotation=30)
    a1.set_ylabel("bits per byte of the answers (held out)")
    a1.legend()
    b, a = before["behaviour"]["t1"], after["behaviour"]["t1"]
    bars = [("skill, parent few-shot", b["skill_fewshot"]), ("skill, parent chat", b["skill"]), ("skill, SFT", a["skill"]),
            ("refuses harmful, parent", b["refusal_harmful"]), ("refuses harmful, SFT", a["refusal_harmful"]),
            ("refuses benign, parent", b["refusal_benign"]), ("refuses benign, SFT", a["refusal_benign"]),
            ("ends, parent", b["end"]), ("ends, SFT", a["end"])]
    vals = [r["rate"] or 0 for _, r in bars]
    err = [[v - r["low"] for v, (_, r) in zip(vals, bars)], [r["high"] - v for v, (_, r) in zip(vals, bars)]]
    a2.barh(np.arange(len(bars)), vals, xerr=err, color=["C0" if "parent" in n else "C1" for n, _ in bars])
    a2.set_yticks(np.arange(len(bars)), [n for n, _ in bars])
    a2.set_xlim(0, 1)
    a2.set_xlabel("rate at temperature 1, 95% Wilson interval (held out)")
    a2.invert_yaxis()
    fig.tight_layout()
    save_figure(fig, path)


def print_figures(before, after):
    print("held-out bits per byte of the answers (parent -> SFT):")
    for s, r in after["bpb"].items():
        if r["bpb"] is not None:
            b = before["bpb"][s]["bpb"]
            print(f"  {s:11s} {b:.3f} -> {r['bpb']:.3f} ({(r['bpb'] - b) / b:+.0%}, {r['n']} conversations)")
    for t in ("t1", "greedy"):
        b, a = before["behaviour"][t], after["behaviour"][t]
        print(f"held-out prompts, {'temperature 1' if t == 't1' else 'greedy'}:")
        print(f"  skill (compare)      parent chat {measure.format_rate(b['skill'])}, few-shot "
              f"{measure.format_rate(b['skill_fewshot'])} -> SFT {measure.format_rate(a['skill'])}")
        for key, what in (("refusal_harmful", "refuses harmful"), ("refusal_benign", "refuses benign"), ("end", "ends with <|end|>")):
            print(f"  {what:20s} {measure.format_rate(b[key])} -> {measure.format_rate(a[key])}")


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    rt = training.setup_runtime(args.device, args.threads)
    out = check_out_dir(args.out_dir, sweep=rt.master)
    ctx = training.autocast(rt.device, training.resolve_dtype(args.dtype, rt.device))

    # set-up: the parent, its tokenizer (which must hold the chat layout), the data
    raw, tok, _ = load_checkpoint(args.init, kind=("base", "chat"), device=rt.device)
    missing = [t for t in CHAT_TOKENS if t not in tok.special_tokens]
    if missing:
        raise StageError(f"{args.init}'s tokenizer has no {', '.join(missing)}: SFT needs the chat layout's special "
                         f"tokens; pretrain with bpe.py's tokenizer")
    width = raw.config.block_size + 1                  # a row: block inputs and their shifted targets
    t0 = time.time()
    train, held_out, mixture, pool = load_data(args, tok, width)
    data_s = time.time() - t0
    eval_prompts = [p for c in SKILLS for p in [p for p in pool if p["split"] == "sft_eval" and p["category"] == c]
                    [:args.eval_prompts or None]]
    shots = measure.skill_shots(pool)
    model = training.wrap(raw, rt)
    opt = training.AdamW(training.param_groups(raw, args.weight_decay), args.lr)
    fpt = flops_per_token(raw.config, raw.num_params())
    accounting = training.Accounting(rt, fpt, FLOPS_FORMULA)
    parent_sha = sha256_file(Path(args.init) / "model.pt")
    step, log, drawn, before = 0, [], {s: {"conversations": 0, "tokens": 0, "supervised": 0} for s in train}, None
    if args.resume:
        step, extra = training.load_train_state(out / "train_state.pt", {"model": raw}, {"adamw": opt}, tok.sha256())
        if extra.get("parent_sha256") != parent_sha:
            raise StageError(f"--resume: the run in {out} fine-tuned another --init than {args.init}; "
                             f"resume with the same --init or start again")
        check_same_run(extra.get("run_flags", {}), args, RUN_FLAGS)
        accounting.load_state_dict(extra["accounting"])
        log, drawn, before = list(extra["log"]), extra["drawn"], extra["before"]
        if step >= (min(args.stop_after, args.max_steps) if args.stop_after else args.max_steps):
            raise StageError(f"--resume: the run in {out} is already at step {step}; nothing to do "
                             f"(raise --max-steps or --stop-after, or start again)")
    if rt.master:
        out.mkdir(parents=True, exist_ok=True)
        prompts_sha = tasks.write_prompts(out / "prompts.jsonl")
        print(f"mixture (conversations: in the source, dropped, trained on, held out; read in {data_s:.0f} s):")
        for s, r in mixture.items():
            print(f"  {s:11s} {r['examples']:6,} {sum(r['contaminated'].values()):4} contaminated "
                  f"{r['too_long']:5,} too long {r['train']:6,} train {r['held_out']:3} held out  weight {r['weight']:g}")
        if before is None:
            print("measuring the parent on held-out data ...", flush=True)
            t0 = time.time()
            before = figures(raw, tok, held_out, eval_prompts, shots, args.max_new_tokens, parent=True)
            print(f"  ({time.time() - t0:.0f} s)")
    rows_local = args.batch_rows // rt.world
    pad = tok.special("<|endoftext|>")

    end_step = min(args.stop_after, args.max_steps) if args.stop_after else args.max_steps
    with tqdm(total=args.max_steps, initial=step, desc="sft", unit="step", disable=not rt.master, mininterval=1) as bar:
        while step < end_step:
            t0 = time.perf_counter()
            lr = training.lr_at(step, args.lr, args.warmup_steps, args.max_steps, args.min_lr_frac)
            opt.lr = lr
            # the step's rows (every process packs them all: cheap), then this process's share
            x, y, used = pack(draws_of(train, args.mix, args.seed, step), args.batch_rows, width, pad)
            n_sup = int((y != IGNORE_INDEX).sum())                 # supervised tokens of the whole step
            share = slice(rt.rank * rows_local, (rt.rank + 1) * rows_local)
            xs, ys = x[share].to(rt.device), y[share].to(rt.device)
            loss, norm = train_step(model, opt, xs, ys, n_sup, args.micro_batch, ctx, args.grad_clip, rt)
            training.stop_if_not_finite(loss, norm, step, out)
            step += 1
            accounting.add_tokens(x.numel())
            for _, source, ids, mask in used:
                d = drawn[source]
                d["conversations"], d["tokens"], d["supervised"] = d["conversations"] + 1, d["tokens"] + len(ids), d["supervised"] + sum(mask)
            if rt.master:
                log.append({"step": step, "loss": round(loss, 5), "lr": lr, "grad_norm": round(norm.item(), 4),
                            "supervised": n_sup, "tokens_per_s": round(x.numel() / (time.perf_counter() - t0))})
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if step == args.max_steps or (args.eval_every and step % args.eval_every == 0):
                    raw.eval()
                    small = {s: c[:8] for s, c in held_out.items() if c}
                    bpbs = [measure.assistant_bpb(raw, tok, c) for c in small.values()]
                    raw.train()
                    val = sum(b["bpb"] * b["bytes"] for b in bpbs if b["bytes"]) / max(sum(b["bytes"] for b in bpbs), 1)
                    log[-1]["val_bpb"] = round(val, 5)
                    tqdm.write(f"step {step}: loss {loss:.3f}, held-out bpb of the answers {val:.3f}")
            if step == end_step or (args.ckpt_every and step % args.ckpt_every == 0):
                extra = {"accounting": accounting.state_dict(), "log": log, "drawn": drawn, "before": before,
                         "parent_sha256": parent_sha, "run_flags": {k: getattr(args, k) for k in RUN_FLAGS}}
                states = training.save_train_state(out / "train_state.pt", step, {"model": raw}, {"adamw": opt},
                                                   tok.sha256(), extra=extra, master=rt.master)

    if rt.master:
        if step == args.max_steps:
            print("measuring the SFT model on held-out data ...", flush=True)
            t0 = time.time()
            after = figures(raw, tok, held_out, eval_prompts, shots, args.max_new_tokens)
            print(f"  ({time.time() - t0:.0f} s)")
            print_figures(before, after)
            plot(out / "sft.png", before, after)
        else:
            after = None
        total = {k: sum(d[k] for d in drawn.values()) for k in ("conversations", "tokens", "supervised")}
        print(f"trained on {total['conversations']:,} conversations drawn, {total['tokens']:,} tokens, "
              f"{total['supervised'] / max(step * args.batch_rows * (width - 1), 1):.0%} of the rows' tokens supervised:")
        for s, d in drawn.items():
            mixture[s]["drawn"] = {**d, "share_of_tokens": d["tokens"] / max(total["tokens"], 1)}
            print(f"  {s:11s} {d['conversations']:6,} conversations, {mixture[s]['drawn']['share_of_tokens']:4.0%} of the "
                  f"tokens, {d['supervised'] / max(d['tokens'], 1):4.0%} of them supervised")
        metrics = {"step": step, "before": before, "after": after, "mixture": mixture,
                   "tokens": step * args.batch_rows * (width - 1), "drawn": total,
                   "supervised_share": total["supervised"] / max(step * args.batch_rows * (width - 1), 1),
                   "trained_split": {"split": args.split, "prompts_sha256": prompts_sha},
                   "train_loss": log[-1]["loss"] if log else None}
        inputs = hash_inputs({"parent": Path(args.init) / "model.pt", "prompts.jsonl": out / "prompts.jsonl",
                              **({"data": Path(args.data)} if args.data else {})})
        save_checkpoint(out, states["model"], raw.config, tok, kind="chat", script="sft.py", args=vars(args),
                        metrics=metrics, inputs=inputs, accounting=accounting.record(), parent=args.init)
        training.write_log(out, log)
        training.plot_curves(out, log, CURVES)
        print(f"done: step {step} -> {out}")
    training.teardown(rt)


if __name__ == "__main__":
    run_main(main)
