"""Stage 5: raters rank the SFT model's answers, and a reward model learns their preferences.

    1. prompts    the task library's reward splits (rm_train, rm_eval): the skills (compare,
                  harmful, benign) and general prompts (demos.general_prompts: registry
                  questions SFT never saw), a seeded sample of --general of them
    2. sample     the SFT model answers each prompt K times (--k, temperature 1, no top-k or
                  top-p), each cut at its <|end|> or at --max-new-tokens: samples.jsonl
    3. rate       the simulated rater (tasks.gold_score, the pipeline's gold standard) ranks
                  each prompt's answers by their gold scores, equal scores tied:
                  rankings.jsonl. The reward model learns rm_train's rankings, or a person's
                  (--rankings FILE, from rate.py: its rm_train rankings train, its rm_eval ones
                  are held out), or someone else's preferences (--preferences FILE: pairs or
                  HH-RLHF, a seeded --preferences-held-out share held out)
    4. train      the SFT trunk with a scalar head read at the last real token (preferences.py);
                  for each prompt all K answers are scored in one pass and its untied pairs
                  (w, l) give the Bradley-Terry loss, mean of -log sigmoid(r_w - r_l); a batch
                  is --batch-prompts prompts; one epoch over rm_train by default
    5. normalise  the head's gain and shift, so that its scores of the SFT model's own answers
                  (rm_train's samples) have mean 0 and standard deviation 1
    6. measure    on the simulated rater's rm_eval rankings (held out, whoever ranked the
                  training set, so runs compare on one gold standard): pair accuracy on untied pairs, overall and
                  per category, with n and a Wilson interval; the correlation of the scores with
                  the gold scores; calibration (the predicted probability that an answer wins,
                  sigmoid(r_w - r_l), against how often it does): calibration.png,
                  pair_accuracy.png; and the same pair accuracy on the rater's own held-out
                  rankings when a file gave them (the rater agrees with itself, not with gold)

Reads:  out/sft (a chat checkpoint), the task library (tasks.py), the registry's questions
        (demos.py), --rankings FILE or --preferences FILE (optional)
Writes: out/reward/model.pt, tokenizer.json, meta.json (kind "reward", its parent and the
        rankings by hash, the figures), samples.jsonl, rankings.jsonl (the simulated rater's),
        log.jsonl, loss.png, calibration.png, pair_accuracy.png

Run:
    python reward.py                                           # run.sh's run
    python rate.py out/reward/samples.jsonl --out mine.jsonl   # rank them yourself, then
    python reward.py --rankings mine.jsonl                     # the same --seed samples the same answers
    python reward.py --preferences hh/train.jsonl.gz           # HH-RLHF or {"prompt", "chosen", "rejected"} lines

References: Ouyang et al. 2022 (InstructGPT: K answers per prompt, all their pairs in one batch
element, one epoch); Stiennon et al. 2020; OpenAI's lm-human-preferences (the normalisation).
"""

import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import demos
import measure
import rankings
import tasks
import training
from common import StageError, atomic_open, check_flags, hash_inputs, run_main, save_figure, check_out_dir
from model import GPT, load_checkpoint, save_checkpoint
from preferences import Scorer, bradley_terry, normalise, score

CATEGORIES = ("compare", "harmful", "benign", "general")


def parse_args(argv=None):
    p = training.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="out/sft", help="the SFT checkpoint: the policy that answers, and the trunk")
    p.add_argument("--out-dir", default="out/reward", help="checkpoint directory")
    p.add_argument("--k", type=int, default=4, help="answers per prompt")
    p.add_argument("--general", type=int, default=600, help="general prompts sampled from the reward splits; 0 = none")
    p.add_argument("--max-new-tokens", type=int, default=48, help="the answers' length limit")
    p.add_argument("--rankings", default="", help="learn a person's rankings of the samples (rate.py's file) instead of the simulated rater's")
    p.add_argument("--preferences", default="", help="learn imported pairs instead (JSON Lines of prompt/chosen/rejected, or HH-RLHF's)")
    p.add_argument("--preferences-held-out", type=float, default=0.1, help="share of the imported pairs held out")
    p.add_argument("--epochs", type=int, default=1, help="passes over the training rankings")
    p.add_argument("--batch-prompts", type=int, default=8, help="prompts (each with its K answers) per step")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
    p.add_argument("--warmup-steps", type=int, default=10, help="linear warm-up steps")
    p.add_argument("--device", default="auto", help="cuda, mps or cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=1337, help="sampling and data order")
    args = p.parse_args(argv)
    check_flags(p, args, {**dict.fromkeys(("general", "threads", "warmup_steps"), 0), "k": 2,
                          **dict.fromkeys(("max_new_tokens", "epochs", "batch_prompts"), 1)}, positive=("lr",))
    if args.rankings and args.preferences:
        p.error("give --rankings (rankings of the samples) or --preferences (imported pairs), not both")
    if not 0 <= args.preferences_held_out < 1:
        p.error(f"--preferences-held-out must be in [0, 1), got {args.preferences_held_out}")
    return args


# ----------------------------------------------------------------------------- 1.-3. prompts, samples, rankings

def reward_prompts(general, seed):
    """The reward splits' prompts: every skill prompt of rm_train and rm_eval, and a seeded
    sample of `general` general prompts (in proportion to the splits)."""
    skills = [p for p in tasks.prompt_pool() if p["split"] in ("rm_train", "rm_eval")]
    pool = demos.general_prompts(demos.load_demonstrations(("chatterbot", "triviaqa", "nq_open"))) if general else []
    return skills + random.Random(seed).sample(pool, min(general, len(pool)))


def sample_answers(model, tok, prompts, k, max_new_tokens, seed):
    """samples records: each prompt answered k times at temperature 1 in the chat layout."""
    end = tok.special("<|end|>")
    ids = [tok.render_prompt([{"role": "user", "content": p["text"]}]) for p in prompts for _ in range(k)]
    new = measure.generate(model, ids, max_new_tokens, 1.0, {end}, seed)
    out = []
    for i, p in enumerate(prompts):
        mine = new[i * k:(i + 1) * k]
        out.append({"prompt_id": p["id"], "messages": [{"role": "user", "content": p["text"]}],
                    "category": p["category"], "split": p["split"],
                    "answers": [measure.answer_text(tok, a) for a in mine],
                    "ended": [bool(a) and a[-1] == end for a in mine]})
    return out


def simulated_rankings(samples, prompts):
    """The simulated rater's rankings: answers ordered by their gold scores, equal scores tied
    (rank = the number of distinct better scores)."""
    by_id = {p["id"]: p for p in prompts}
    out = []
    for s in samples:
        gold = [tasks.gold_score(by_id[s["prompt_id"]], a, e) for a, e in zip(s["answers"], s["ended"])]
        levels = sorted(set(gold), reverse=True)
        out.append(rankings.ranking(s, [levels.index(g) for g in gold], "simulated"))
    return out


# ----------------------------------------------------------------------------- 4.-6. the reward model

def tokens_of(tok, record):
    """Prompt + answer token lists of a ranking's K answers, in the chat layout (render_chat),
    each ending with the answer's <|end|>: the score is read there."""
    return [tok.render_chat(record["messages"] + [{"role": "assistant", "content": a}])[0] for a in record["answers"]]


def step_loss(scorer, tok, records, block, device):
    """The mean over the records (prompts) of each one's Bradley-Terry loss."""
    seqs = [t[-block:] for r in records for t in tokens_of(tok, r)]
    scores = score(scorer, seqs, tok.special("<|endoftext|>"), device=device)
    losses, start = [], 0
    for r in records:
        k = len(r["answers"])
        losses.append(bradley_terry(scores[start:start + k], rankings.untied_pairs(r["ranks"])))
        start += k
    return torch.stack(losses).mean()


@torch.no_grad()
def scores_of(scorer, tok, records, block, device, batch=64):
    """[[score of each answer] per record]."""
    flat = [t[-block:] for r in records for t in tokens_of(tok, r)]
    out = torch.cat([score(scorer, flat[i:i + batch], tok.special("<|endoftext|>"), device=device).float().cpu()
                     for i in range(0, len(flat), batch)]).tolist()
    res, start = [], 0
    for r in records:
        res.append(out[start:start + len(r["answers"])])
        start += len(r["answers"])
    return res


def held_out_figures(records, scores, gold):
    """Pair accuracy on untied pairs (overall and per category, Wilson intervals), the
    correlation of the scores with the gold scores, and calibration bins."""
    hits = {c: [] for c in ("all", *CATEGORIES)}
    predicted, won = [], []
    for r, s in zip(records, scores):
        for w, lose in rankings.untied_pairs(r["ranks"]):
            hit = s[w] > s[lose]
            hits["all"].append(hit)
            hits.setdefault(r.get("category") or "other", []).append(hit)
            p = 1 / (1 + math.exp(-(s[w] - s[lose])))           # P(w beats l) as the model says
            predicted += [p, 1 - p]
            won += [1, 0]
    out = {"pair_accuracy": {c: measure.rate(h) for c, h in hits.items() if h}}
    flat_s = [x for s in scores for x in s]
    flat_g = [x for g in gold for x in g] if gold else []
    if flat_g and np.std(flat_g) > 0 and np.std(flat_s) > 0:
        out["correlation_with_gold"] = float(np.corrcoef(flat_s, flat_g)[0, 1])
    bins = np.linspace(0, 1, 11)
    which = np.clip(np.digitize(predicted, bins) - 1, 0, 9)
    out["calibration"] = [{"predicted": float(np.mean(np.array(predicted)[which == b])),
                           "won": float(np.mean(np.array(won)[which == b])), "n": int((which == b).sum())}
                          for b in range(10) if (which == b).any()]
    return out


def plot_figures(out, figures):
    """calibration.png (predicted probability of winning against the rate of winning, per
    bin) and pair_accuracy.png (per category, with the Wilson intervals and a coin's 0.5)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect")
    calibration = figures["calibration"]
    ax.plot([c["predicted"] for c in calibration], [c["won"] for c in calibration], marker="o", label="reward model")
    ax.set_xlabel("predicted probability that the answer wins")
    ax.set_ylabel("how often it wins (held-out rankings)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / "calibration.png")

    acc = figures["pair_accuracy"]
    names = list(acc)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    rates = [acc[c]["rate"] for c in names]
    errors = [[r - acc[c]["low"] for c, r in zip(names, rates)], [acc[c]["high"] - r for c, r in zip(names, rates)]]
    ax.bar(range(len(names)), rates, yerr=errors, capsize=4, color="tab:blue")
    ax.axhline(0.5, color="grey", linestyle="--", label="a coin")
    ax.set_xticks(range(len(names)), [f"{c}\nn={acc[c]['n']}" for c in names])
    ax.set_ylim(0, 1)
    ax.set_ylabel("held-out pair accuracy (95% interval)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out / "pair_accuracy.png")


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    rt = training.setup_runtime(args.device, args.threads)
    out = check_out_dir(args.out_dir)
    policy, tok, _ = load_checkpoint(args.init, kind="chat", device=rt.device)
    policy.eval()
    block = policy.config.block_size

    # 1.-3. prompts, samples, rankings. A file given is read first, so a bad one stops the stage
    # before minutes of sampling; a person's rankings are checked again against the samples.
    imported = rankings.import_preferences(args.preferences) if args.preferences else None
    if args.rankings:
        rankings.read_rankings(args.rankings)
    t0 = time.time()
    prompts = reward_prompts(args.general, args.seed)
    samples = sample_answers(policy, tok, prompts, args.k, args.max_new_tokens, args.seed)
    print(f"sampled {args.k} answers to each of {len(prompts):,} prompts in {time.time() - t0:.0f} s")
    split = tasks.require_train_split("rm_train")
    simulated = simulated_rankings(samples, prompts)
    held = [r for r in simulated if r["split"] == "rm_eval"]            # the gold standard's held-out rankings
    own_answers = [s for s in samples if s["split"] == split]           # what the head is normalised on
    if imported is not None:
        for r in imported:
            r["category"] = r.get("category") or "import"
        shuffled = random.Random(args.seed).sample(imported, len(imported))
        n_held = round(args.preferences_held_out * len(shuffled))
        train, own_held = shuffled[n_held:], shuffled[:n_held]
    elif args.rankings:
        mine = rankings.read_rankings(args.rankings, {s["prompt_id"]: s for s in samples})
        split_of = {s["prompt_id"]: s["split"] for s in samples}
        train = [r for r in mine if split_of[r["prompt_id"]] == split]
        own_held = [r for r in mine if split_of[r["prompt_id"]] == "rm_eval"]
    else:
        train, own_held = [r for r in simulated if r["split"] == split], []
    if not any(rankings.untied_pairs(r["ranks"]) for r in train):
        raise StageError(f"{len(train)} training rankings and not one untied pair among them: "
                         f"rank some {split} prompts' answers apart (ties teach nothing)")
    if not held:
        raise StageError("no held-out (rm_eval) prompt was sampled; the task library's splits are empty")

    # 4. the reward model: the SFT weights, a fresh head
    torch.manual_seed(args.seed)
    model = GPT(policy.config, scalar_head=True).to(rt.device)
    missing = model.load_state_dict(policy.state_dict(), strict=False).missing_keys
    assert set(missing) == {"head.weight", "head.bias", "head.gain", "head.shift"}, missing
    scorer = Scorer(model)
    opt = training.AdamW(training.param_groups(model, 0.0), args.lr)
    order = [r for _ in range(args.epochs) for r in random.Random(args.seed).sample(train, len(train))]
    steps = math.ceil(len(order) / args.batch_prompts)
    log = []
    for step in tqdm(range(steps), desc="reward", unit="step", mininterval=1):
        opt.lr = training.lr_at(step, args.lr, args.warmup_steps, steps, 0.1)
        loss = step_loss(scorer, tok, order[step * args.batch_prompts:(step + 1) * args.batch_prompts], block, rt.device)
        loss.backward()
        norm = training.clip_grad_norm(model.parameters(), 1.0)
        training.stop_if_not_finite(loss.item(), norm, step, out)
        opt.step()
        opt.zero_grad()
        log.append({"step": step + 1, "loss": round(loss.item(), 5), "lr": opt.lr})
    model.eval()

    # 5. normalise on the policy's own answers; 6. measure on the held-out rankings
    normalise(model.head, torch.tensor([x for s in scores_of(scorer, tok, own_answers, block, rt.device) for x in s]))
    by_id, sample_of = {p["id"]: p for p in prompts}, {s["prompt_id"]: s for s in samples}
    gold = [[tasks.gold_score(by_id[r["prompt_id"]], a, e)
             for a, e in zip(sample_of[r["prompt_id"]]["answers"], sample_of[r["prompt_id"]]["ended"])] for r in held]
    figures = held_out_figures(held, scores_of(scorer, tok, held, block, rt.device), gold)
    for c, r in figures["pair_accuracy"].items():
        print(f"held-out pair accuracy {c:8s} {measure.format_rate(r)}")
    print(f"correlation with the gold scores: {figures.get('correlation_with_gold')}")
    if own_held:
        own = held_out_figures(own_held, scores_of(scorer, tok, own_held, block, rt.device), None)["pair_accuracy"]
        figures["pair_accuracy_own_rater"] = own
        print(f"pair accuracy on the rater's own held-out rankings: {measure.format_rate(own['all'])}")

    out.mkdir(parents=True, exist_ok=True)
    with atomic_open(out / "samples.jsonl") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in samples)
    rankings.write_rankings(out / "rankings.jsonl", simulated)
    plot_figures(out, figures)
    training.write_log(out, log)
    training.plot_curves(out, log, {"loss": [("train", "loss")]})
    metrics = {**figures, "prompts": len(prompts), "k": args.k, "train_rankings": len(train), "held_out_rankings": len(held),
               "train_loss": log[-1]["loss"], "rater": sorted({r["rater"] for r in train})}
    inputs = {"parent": Path(args.init) / "model.pt"}
    if args.rankings or args.preferences:
        inputs["rankings"] = Path(args.rankings or args.preferences)
    save_checkpoint(out, model.state_dict(), model.config, tok, kind="reward", script="reward.py", args=vars(args),
                    metrics=metrics, inputs=hash_inputs(inputs), parent=args.init)
    print(f"done -> {out}")


if __name__ == "__main__":
    run_main(main)
