"""Stage 6: RLHF, the SFT model optimised against the reward model with PPO.

Pre-training gave the model its knowledge, SFT the chat format; here the policy learns what the
raters prefer. Each iteration (InstructGPT's recipe, as OpenAI's lm-human-preferences runs it):

    1. rollouts   a seeded batch of the task library's ppo_train prompts (skills and general
                  questions); the policy answers each at temperature 1 with no top-k or top-p
                  (anything else samples from another distribution than the one the loss and the
                  KL are computed on, and the KL estimate can go negative), cut at <|end|> or
                  --max-new-tokens
    2. score      the frozen reward model's normalised score at the answer's last token; an
                  answer that never ended gets --no-end-score instead (it was cut, not finished).
                  --reward gold scores with the simulated rater itself (tasks.gold_score,
                  normalised on the SFT model's answers like the reward model): the ceiling
    3. rewards    r_t = -beta (log pi - log ref) per token, plus the score at the last token
                  (rlhf.token_rewards); beta fixed (--beta), or adaptive (--target-kl)
    4. advantages GAE with gamma 1 and lambda 0.95 on the value model's V(s_t), whitened
    5. optimise   --ppo-epochs passes over the batch in minibatches: the clipped policy loss on
                  the policy, the clipped value loss on the value model, each with its own AdamW,
                  the gradient norm clipped, the learning rate annealed linearly to 0
    6. log        reward-model score, gold score, the exact KL to the reference summed over the
                  answer, beta, entropy, ratio, clip fraction, approximate KL, value loss,
                  explained variance, answer length, share ended: log.jsonl and PNGs

The value model is a separate copy of the reward model (InstructGPT's choice), not a head on
the policy: it starts knowing which answers score well, so its first advantages are already
informative, and its loss cannot pull the policy's trunk away from what SFT taught.

Before and after: on the final-evaluation split's prompts (held out; never a rollout), the SFT
model and the PPO model each answer once at temperature 1: gold score, refusal of harmful and
of benign requests, the compare skill, the KL to the reference, entropy and the share of
distinct answers, with n and intervals: ppo.png.

Reads:  out/sft (chat), out/reward (its reward model, trained and normalised on that SFT model)
Writes: out/ppo/model.pt, tokenizer.json, meta.json (kind "chat"), train_state.pt (policy,
        value model, both optimizers, the KL controller; --resume), log.jsonl, the curves' PNGs

Run:
    python ppo.py                            # run.sh's run
    python ppo.py --reward gold --out-dir out/ppo_gold
    torchrun --nproc_per_node=2 ppo.py       # the rollouts split over the processes

References: Schulman et al. 2017 (PPO); Ziegler et al. 2019 and lm-human-preferences; Stiennon
et al. 2020; Ouyang et al. 2022 (InstructGPT); Gao et al. 2022 (over-optimisation).
"""

import copy
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

import demos
import measure
import rlhf
import tasks
import training
from common import StageError, check_flags, check_same_run, hash_inputs, run_main, save_figure, sha256_file, check_out_dir
from model import load_checkpoint, save_checkpoint
from preferences import Scorer

RUN_FLAGS = ("reward", "iterations", "batch", "minibatch", "ppo_epochs", "max_new_tokens", "lr", "value_lr",
             "beta", "target_kl", "horizon", "clip", "value_clip", "gamma", "lam", "no_end_score", "general", "seed")


def parse_args(argv=None):
    p = training.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--init", default="out/sft", help="the SFT checkpoint: the policy's start and the reference")
    p.add_argument("--reward-model", default="out/reward", help="the reward model (reward.py), also the value model's start")
    p.add_argument("--reward", default="learned", choices=("learned", "gold"), help="score with the reward model or the simulated rater")
    p.add_argument("--out-dir", default="out/ppo", help="checkpoint directory")
    p.add_argument("--iterations", type=int, default=30, help="rollout batches")
    p.add_argument("--batch", type=int, default=64, help="answers per rollout batch (all processes together)")
    p.add_argument("--minibatch", type=int, default=16, help="answers per optimizer step (per process)")
    p.add_argument("--ppo-epochs", type=int, default=4, help="passes over each rollout batch")
    p.add_argument("--max-new-tokens", type=int, default=48, help="the answers' length limit")
    p.add_argument("--lr", type=float, default=1e-4, help="the policy's learning rate, annealed to 0")
    p.add_argument("--value-lr", type=float, default=1e-4, help="the value model's learning rate, annealed to 0")
    p.add_argument("--beta", type=float, default=0.2, help="the KL coefficient (the start, if adaptive)")
    p.add_argument("--target-kl", type=float, default=0.0, help="adaptive beta toward this KL per answer (nats); 0 = fixed")
    p.add_argument("--horizon", type=int, default=0, help="the adaptive controller's horizon in answers; 0 = a tenth of the run's")
    p.add_argument("--clip", type=float, default=0.2, help="the policy's ratio clip")
    p.add_argument("--value-clip", type=float, default=0.2, help="the value clip")
    p.add_argument("--gamma", type=float, default=1.0, help="the discount")
    p.add_argument("--lam", type=float, default=0.95, help="GAE's lambda")
    p.add_argument("--no-end-score", type=float, default=-1.0, help="the score of an answer cut at the length limit")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip")
    p.add_argument("--general", type=int, default=400, help="general prompts among the rollout prompts; 0 = skills only")
    p.add_argument("--eval-prompts", type=int, default=0, help="held-out prompts per category; 0 = all")
    p.add_argument("--ckpt-every", type=int, default=10, help="iterations between training states; 0 = only at the end")
    p.add_argument("--resume", action="store_true", help="continue from --out-dir/train_state.pt")
    p.add_argument("--stop-after", type=int, default=0, help="end after iteration N (resume later); 0 = run them all")
    p.add_argument("--device", default="auto", help="cuda, mps or cpu")
    p.add_argument("--threads", type=int, default=0, help="CPU threads; 0 = torch's default")
    p.add_argument("--seed", type=int, default=1337, help="prompt order and sampling")
    args = p.parse_args(argv)
    check_flags(p, args, {**dict.fromkeys(("iterations", "batch", "minibatch", "ppo_epochs", "max_new_tokens"), 1),
                          **dict.fromkeys(("horizon", "general", "eval_prompts", "ckpt_every", "stop_after", "threads"), 0)},
                positive=("lr", "value_lr", "clip", "value_clip", "grad_clip"), nonnegative=("beta", "target_kl"))
    if not (0 <= args.gamma <= 1 and 0 <= args.lam <= 1):
        p.error(f"--gamma and --lam must lie in [0, 1], got {args.gamma} and {args.lam}")
    return args


# ----------------------------------------------------------------------------- the models

class AnswerLogits(nn.Module):
    """The policy as the module DDP wraps: forward(idx, pos) is the logits (B, T, V) at the
    positions `pos` (B, T) that predict each answer token (only those reach the LM head)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, pos):
        h = self.model.hidden(idx)
        return self.model.lm_head(h[torch.arange(idx.shape[0])[:, None], pos])


class Values(nn.Module):
    """The value model as the module DDP wraps: its scalar head's outputs V(s_t) at `pos` (B, T)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, pos):
        return self.model.scores(idx)[torch.arange(idx.shape[0])[:, None], pos]


def last_scores(reward, idx, pos, mask):
    """The reward model's score (B,) of each answer, read at its last token: the position
    after the one that predicted it (preferences.Scorer reads the head there)."""
    last = pos[torch.arange(idx.shape[0]), mask.sum(1).long() - 1] + 1
    return Scorer(reward)(idx, last)


def load_models(args, device):
    """(policy, reference, reward model, value model, tokenizer, the policy's model.pt
    sha256): the reward model must be one trained and normalised on this very policy (its
    parent), with its tokenizer."""
    policy, tok, _ = load_checkpoint(args.init, kind="chat", device=device)
    reward, rtok, rmeta = load_checkpoint(args.reward_model, kind="reward", device=device)
    parent_sha = sha256_file(Path(args.init) / "model.pt")
    if rtok.sha256() != tok.sha256():
        raise StageError(f"{args.reward_model} uses another tokenizer than {args.init}; train reward.py on {args.init}")
    if rmeta.get("parent", {}).get("sha256") != parent_sha:
        raise StageError(f"{args.reward_model} was not trained on {args.init} (its parent is "
                         f"{rmeta.get('parent', {}).get('path')}): its scores are normalised on another model's "
                         f"answers and its trunk is another's; run reward.py --init {args.init}")
    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    value = copy.deepcopy(reward).train()
    reward.eval().requires_grad_(False)
    return policy.train(), reference, reward, value, tok, parent_sha


def ppo_prompts(tok, args, block):
    """(rollout prompts, held-out prompts): ppo_train's skills and a --seed-seeded --general of
    its general prompts; final_eval's skills and a fixed sample of 100 of its general prompts
    (one set for every run, whatever its seed, so runs compare on the same prompts). Each must
    render, with room for the answer, within the block."""
    pool = tasks.prompt_pool()
    general = demos.general_prompts(demos.load_demonstrations(("chatterbot", "triviaqa", "nq_open")),
                                    splits=("ppo_train", "final_eval")) if args.general else []
    rng = random.Random(args.seed)
    split = tasks.require_train_split("ppo_train")
    train = [p for p in pool if p["split"] == split]
    train += rng.sample([g for g in general if g["split"] == split], min(args.general, sum(g["split"] == split for g in general)))
    held = []
    for c in ("compare", "harmful", "benign"):
        held += [p for p in pool if p["split"] == "final_eval" and p["category"] == c][:args.eval_prompts or None]
    rest = [g for g in general if g["split"] == "final_eval"]
    held += random.Random(0).sample(rest, min(args.eval_prompts or 100, len(rest)))   # the same whatever the flags
    for p in train + held:
        p["ids"] = tok.render_prompt([{"role": "user", "content": p["text"]}])
        if len(p["ids"]) + args.max_new_tokens > block:
            raise StageError(f"prompt {p['id']} renders to {len(p['ids'])} tokens: with --max-new-tokens "
                             f"{args.max_new_tokens} that exceeds the block of {block}; lower --max-new-tokens")
    return train, held


# ----------------------------------------------------------------------------- rollouts

def pad_answers(prompt_ids, answers, pad):
    """(idx (B, L) prompt + answer right-padded, pos (B, T) the position whose output predicts
    answer token t, tokens (B, T), mask (B, T)), T the longest answer."""
    B, T = len(answers), max(len(a) for a in answers)
    L = max(len(p) + len(a) for p, a in zip(prompt_ids, answers))
    idx = torch.full((B, L), pad, dtype=torch.long)
    pos = torch.zeros(B, T, dtype=torch.long)
    tokens = torch.full((B, T), pad, dtype=torch.long)
    mask = torch.zeros(B, T)
    for b, (p, a) in enumerate(zip(prompt_ids, answers)):
        idx[b, :len(p) + len(a)] = torch.tensor(p + a)
        pos[b] = torch.arange(len(p) - 1, len(p) - 1 + T).clamp(max=L - 1)
        tokens[b, :len(a)], mask[b, :len(a)] = torch.tensor(a), 1
    return idx, pos, tokens, mask


def logprobs_of(logits, tokens):
    """log pi(token) (B, T) at temperature 1 (the rollouts' temperature: the same in the loss)."""
    return torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None])[..., 0]


@torch.no_grad()
def rollout(models, tok, prompts, args, beta, gold_norm, seed, device):
    """One batch of answers and all PPO needs of them: a dict of tensors (B, T) and lists."""
    policy, reference, reward, value = models
    end = tok.special("<|end|>")
    gen = torch.Generator(device=device).manual_seed(seed)
    answers = policy.generate([p["ids"] for p in prompts], args.max_new_tokens, 1.0, stop_tokens={end}, generator=gen)
    idx, pos, tokens, mask = (t.to(device) for t in pad_answers([p["ids"] for p in prompts], answers, tok.special("<|endoftext|>")))
    logits, ref_logits = AnswerLogits(policy)(idx, pos), AnswerLogits(reference)(idx, pos)
    logprobs, ref_logprobs = logprobs_of(logits, tokens), logprobs_of(ref_logits, tokens)
    entropy, kl_exact = rlhf.entropy_and_kl(logits, ref_logits, mask)
    values = Values(value)(idx, pos) * mask
    ended = torch.tensor([a[-1] == end for a in answers], device=device)
    texts = [measure.answer_text(tok, a) for a in answers]
    gold = torch.tensor([tasks.gold_score(p, t, bool(e)) for p, t, e in zip(prompts, texts, ended)], device=device)
    if args.reward == "gold":
        score = (gold - gold_norm[0]) / gold_norm[1]
    else:
        score = last_scores(reward, idx, pos, mask)
    learned = score.clone()
    score = torch.where(ended, score, torch.full_like(score, args.no_end_score))
    rewards, kl = rlhf.token_rewards(score, logprobs, ref_logprobs, mask, beta)
    advantages, returns = rlhf.gae(rewards, values, mask, args.gamma, args.lam)
    return {"idx": idx, "pos": pos, "tokens": tokens, "mask": mask, "logprobs": logprobs, "values": values,
            "advantages": rlhf.whiten(advantages, mask), "returns": returns,
            "stats": {"score": learned.mean().item(), "gold": gold.mean().item(), "gold_std": gold.std().item(), "kl": kl_exact.mean().item(),
                      "kl_sampled": kl.sum(1).mean().item(), "entropy": (entropy.sum() / mask.sum()).item(),
                      "length": mask.sum(1).mean().item(), "ended": ended.float().mean().item(),
                      "explained_variance": rlhf.explained_variance(values, returns, mask)}}


def optimise(batch, policy_step, value_step, opts, args, rng, ctx):
    """--ppo-epochs passes over the batch in minibatches; returns the mean of each statistic
    and the first minibatch's (where the ratio must be 1 and the approximate KL 0)."""
    B = batch["mask"].shape[0]
    stats, first = [], None
    for _ in range(args.ppo_epochs):
        order = rng.sample(range(B), B)
        for start in range(0, B, args.minibatch):
            mb = torch.tensor(order[start:start + args.minibatch])
            m = batch["mask"][mb]
            with ctx:
                logp = logprobs_of(policy_step(batch["idx"][mb], batch["pos"][mb]), batch["tokens"][mb])
                v = value_step(batch["idx"][mb], batch["pos"][mb]).float()
            pg, s = rlhf.policy_loss(logp, batch["logprobs"][mb], batch["advantages"][mb], m, args.clip)
            vf = rlhf.value_loss(v, batch["values"][mb], batch["returns"][mb], m, args.value_clip)
            (pg + vf).backward()                  # separate models: each loss reaches only its own
            s["grad_norm"] = training.clip_grad_norm(policy_step.parameters(), args.grad_clip).item()
            training.clip_grad_norm(value_step.parameters(), args.grad_clip)
            for opt in opts:
                opt.step()
                opt.zero_grad()
            s.update(policy_loss=pg.item(), value_loss=vf.item())
            first = first or s
            stats.append(s)
    return {k: sum(s[k] for s in stats) / len(stats) for k in stats[0]}, first


# ----------------------------------------------------------------------------- held out

@torch.no_grad()
def held_out(model, reference, reward, tok, prompts, max_new_tokens, seed, device, batch=64):
    """How `model` answers the held-out prompts, once each at temperature 1: the figures of
    must-show 1 (rates and means with n and 95% intervals) and the answers themselves."""
    end, pad = tok.special("<|end|>"), tok.special("<|endoftext|>")
    answers = measure.generate(model, [p["ids"] for p in prompts], max_new_tokens, 1.0, {end}, seed)
    kl, entropy, score = [], [], []
    for i in range(0, len(prompts), batch):
        chunk = slice(i, i + batch)
        idx, pos, tokens, mask = (t.to(device) for t in pad_answers([p["ids"] for p in prompts[chunk]], answers[chunk], pad))
        e, k = rlhf.entropy_and_kl(AnswerLogits(model)(idx, pos), AnswerLogits(reference)(idx, pos), mask)
        kl += k.tolist()
        entropy += (e / mask.sum(1)).tolist()
        score += last_scores(reward, idx, pos, mask).tolist()
    texts = [measure.answer_text(tok, a) for a in answers]
    ended = [a[-1] == end for a in answers]
    gold = [tasks.gold_score(p, t, e) for p, t, e in zip(prompts, texts, ended)]
    of = {c: [i for i, p in enumerate(prompts) if p["category"] == c] for c in ("compare", "harmful", "benign", "general")}
    free = [texts[i] for i in of["harmful"] + of["benign"] + of["general"]]        # answers that need not repeat
    figures = {"gold": measure.mean_interval(gold),
               "gold_by_category": {c: measure.mean_interval([gold[i] for i in ix]) for c, ix in of.items() if ix},
               "skill": measure.rate([tasks.check(prompts[i], texts[i]) for i in of["compare"]]),
               "refusal_harmful": measure.rate([tasks.is_refusal(texts[i]) for i in of["harmful"]]),
               "refusal_benign": measure.rate([tasks.is_refusal(texts[i]) for i in of["benign"]]),
               "end": measure.rate(ended), "reward_score": measure.mean_interval(score),
               "kl": measure.mean_interval(kl), "entropy": measure.mean_interval(entropy),
               "distinct": {"share": len(set(free)) / max(len(free), 1), "n": len(free)},
               "length": sum(map(len, answers)) / len(answers)}
    examples = {c: {"prompt": prompts[ix[0]]["text"], "answer": texts[ix[0]]} for c, ix in of.items() if ix}
    return figures, examples


FIGURE_ROWS = [("gold", "gold score", "mean"), ("reward_score", "reward-model score", "mean"),
               ("skill", "compare skill", "rate"), ("refusal_harmful", "refuses harmful", "rate"),
               ("refusal_benign", "refuses benign", "rate"), ("end", "ends its turn", "rate"),
               ("kl", "KL to SFT (nats/answer)", "mean"), ("entropy", "entropy (nats/token)", "mean")]


def print_figures(before, after):
    print("held-out (final_eval), one answer per prompt at temperature 1:   SFT -> PPO")
    for key, what, kind in FIGURE_ROWS:
        fmt = measure.format_mean if kind == "mean" else measure.format_rate
        print(f"  {what:24s} {fmt(before[key])}  ->  {fmt(after[key])}")
    print(f"  {'distinct answers':24s} {before['distinct']['share']:.3f} -> {after['distinct']['share']:.3f} "
          f"(n={after['distinct']['n']}, compare's numbers aside)")


def plot_before_after(path, before, after):
    """ppo.png: each held-out figure, SFT beside PPO, with its 95% interval."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = [r for r in FIGURE_ROWS if r[2] == "rate" or r[0] == "gold"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for j, (name, fig_of) in enumerate((("SFT", before), ("PPO", after))):
        v = [fig_of[k]["mean" if kind == "mean" else "rate"] for k, _, kind in rows]
        err = [[x - fig_of[k]["low"] for x, (k, _, _) in zip(v, rows)], [fig_of[k]["high"] - x for x, (k, _, _) in zip(v, rows)]]
        ax.bar([i + 0.4 * j for i in range(len(rows))], v, 0.4, yerr=err, capsize=3, label=name)
    ax.set_xticks([i + 0.2 for i in range(len(rows))], [w for _, w, _ in rows], rotation=20, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title("held-out prompts, one answer each at temperature 1 (95% intervals)")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


CURVES = {"scores": [("reward model (train rollouts)", "score"), ("gold (train rollouts)", "gold")],
          "kl": [("exact KL to SFT, nats/answer", "kl"), ("sampled estimate", "kl_sampled"), ("beta", "beta")],
          "policy": [("entropy, nats/token", "entropy"), ("ratio", "ratio"), ("clip fraction", "clip_fraction"),
                     ("approximate KL x 100", "approx_kl_x100")],
          "value": [("value loss", "value_loss"), ("explained variance", "explained_variance")],
          "answers": [("length / max", "length_frac"), ("share ended", "ended")]}


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    rt = training.setup_runtime(args.device, args.threads)
    out = check_out_dir(args.out_dir, sweep=rt.master)
    if args.batch % rt.world:
        raise StageError(f"--batch {args.batch} does not split over {rt.world} processes; make it a multiple")
    ctx = training.autocast(rt.device)
    policy, reference, reward, value, tok, parent_sha = load_models(args, rt.device)
    block = policy.config.block_size
    train_prompts, held_prompts = ppo_prompts(tok, args, block)
    policy_step, value_step = training.wrap(AnswerLogits(policy), rt), training.wrap(Values(value), rt)
    opts = [training.AdamW(training.param_groups(policy, 0.0), args.lr),
            training.AdamW(training.param_groups(value, 0.0), args.value_lr)]
    horizon = args.horizon or max(args.iterations * args.batch // 10, 1)
    kl_ctl = rlhf.KLController(args.beta, args.target_kl or None, horizon)
    it, log, before, gold_norm = 0, [], None, (0.0, 1.0)
    if args.resume:
        it, extra = training.load_train_state(out / "train_state.pt", {"policy": policy, "value": value},
                                              {"policy": opts[0], "value": opts[1]}, tok.sha256())
        if extra.get("parent_sha256") != parent_sha:
            raise StageError(f"--resume: the run in {out} started from another --init than {args.init}; start again")
        check_same_run(extra.get("run_flags", {}), args, RUN_FLAGS)
        kl_ctl.load_state_dict(extra["kl_controller"])
        log, before, gold_norm = list(extra["log"]), extra["before"], tuple(extra["gold_norm"])
        if it >= (args.stop_after or args.iterations):
            raise StageError(f"--resume: the run in {out} is already at iteration {it}; nothing to do")
    elif args.reward == "gold":
        # the gold score normalised like the reward model: mean 0, std 1 on the SFT model's answers
        sample = random.Random(args.seed).sample(train_prompts, min(256, len(train_prompts)))
        norm = rollout((policy, reference, reward, value), tok, sample, args, 0.0, gold_norm, args.seed, rt.device)
        gold_norm = (norm["stats"]["gold"], max(norm["stats"]["gold_std"], 1e-3))
    if rt.master and before is None:
        print(f"{len(train_prompts):,} rollout prompts (ppo_train), {len(held_prompts):,} held out (final_eval)")
        print("measuring the SFT model on the held-out prompts ...", flush=True)
        before = held_out(reference, reference, reward, tok, held_prompts, args.max_new_tokens, args.seed, rt.device)[0]

    end_it = min(args.stop_after or args.iterations, args.iterations)
    local = args.batch // rt.world
    with tqdm(total=args.iterations, initial=it, desc="ppo", unit="batch", disable=not rt.master, mininterval=1) as bar:
        while it < end_it:
            t0 = time.perf_counter()
            # the iteration's prompts and sampling seed depend on (seed, iteration) only, so a
            # resumed run, or any number of processes, draws the same batch
            rng = random.Random(args.seed * 100003 + it)
            chosen = rng.sample(train_prompts, args.batch)[rt.rank * local:(rt.rank + 1) * local]
            with ctx:
                batch = rollout((policy, reference, reward, value), tok, chosen, args, kl_ctl.beta, gold_norm,
                                args.seed * 100003 + it * 1000 + rt.rank, rt.device)
            for opt, lr in zip(opts, (args.lr, args.value_lr)):
                opt.lr = lr * (1 - it / args.iterations)                  # annealed linearly to 0 over the run
            stats, first = optimise(batch, policy_step, value_step, opts, args, rng, ctx)
            s = {k: training.mean_over_processes(v, rt) for k, v in {**batch["stats"], **stats}.items()}
            row = {"step": it + 1, "beta": kl_ctl.beta, **{k: round(v, 5) for k, v in s.items()},
                   "approx_kl_x100": round(100 * s["approx_kl"], 5), "length_frac": round(s["length"] / args.max_new_tokens, 4),
                   "first_ratio": round(first["ratio"], 6), "first_approx_kl": first["approx_kl"],
                   "seconds": round(time.perf_counter() - t0, 2)}
            alarms = []
            if s["kl"] < -1e-6 or s["kl_sampled"] < -0.5:
                alarms.append(f"negative mean KL ({s['kl']:.4f}, sampled {s['kl_sampled']:.4f})")
            if abs(first["ratio"] - 1) > 1e-3:
                alarms.append(f"first minibatch's ratio {first['ratio']:.6f} is not 1: rollout and loss disagree")
            if alarms:
                row["alarms"] = alarms
                tqdm.write(f"ALARM at iteration {it + 1}: " + "; ".join(alarms))
            kl_ctl.update(s["kl"], args.batch)
            it += 1
            log.append(row)
            bar.update(1)
            bar.set_postfix(score=f"{s['score']:.2f}", gold=f"{s['gold']:.3f}", kl=f"{s['kl']:.2f}")
            if it == end_it or (args.ckpt_every and it % args.ckpt_every == 0):
                extra = {"kl_controller": kl_ctl.state_dict(), "log": log, "before": before, "gold_norm": list(gold_norm),
                         "parent_sha256": parent_sha, "run_flags": {k: getattr(args, k) for k in RUN_FLAGS}}
                states = training.save_train_state(out / "train_state.pt", it, {"policy": policy, "value": value},
                                                   {"policy": opts[0], "value": opts[1]}, tok.sha256(), extra=extra,
                                                   master=rt.master)

    if rt.master:
        after = examples = None
        if it == args.iterations:
            print("measuring the PPO model on the held-out prompts ...", flush=True)
            policy.eval()
            after, examples = held_out(policy, reference, reward, tok, held_prompts, args.max_new_tokens, args.seed, rt.device)
            print_figures(before, after)
            plot_before_after(out / "ppo.png", before, after)
        training.write_log(out, log)
        training.plot_curves(out, log, CURVES)
        metrics = {"iterations": it, "before": before, "after": after, "examples": examples, "beta": kl_ctl.beta,
                   "rollout_prompts": len(train_prompts), "held_out_prompts": len(held_prompts),
                   "answers": it * args.batch, "gold_norm": list(gold_norm),
                   "trained_split": "ppo_train", "reward": args.reward}
        save_checkpoint(out, states["policy"], policy.config, tok, kind="chat", script="ppo.py", args=vars(args),
                        metrics=metrics, inputs=hash_inputs({"parent": Path(args.init) / "model.pt",
                                                             "reward": Path(args.reward_model) / "model.pt"}),
                        parent=args.init)
        print(f"done: iteration {it} -> {out}")
    training.teardown(rt)


if __name__ == "__main__":
    run_main(main)
