"""PPO against its baselines, several seeds each: the default run, low KL coefficients (where
reward hacking would show), PPO on the gold rater itself (the ceiling a perfect reward model
would give), and best-of-n sampling from the SFT model (Gao et al. 2022's over-optimisation
picture: gold and proxy score against KL).

    runs        ppo.py --seed s for s in --seeds, with the default beta, each of --betas, and
                --reward gold; each measured on the same held-out prompts (final_eval)
    best-of-n   the SFT model answers each held-out prompt max(--ns) times at temperature 1;
                for each n the reward model keeps the best of the first n answers; its KL to
                the SFT model is log n - (n - 1) / n (Stiennon et al. 2020, appendix)
    out         ppo_sweep.json (every figure), ppo_sweep.md (the table: mean and spread over
                seeds), ppo_sweep.png (gold and proxy against KL: each run's training rollouts
                as a line, its held-out end point, best-of-n's points)

Run (after run.sh; about 2 minutes per PPO run on 2 cores):
    python bench/ppo_sweep.py --sft out/sft --reward-model out/reward --seeds 1 2 3
"""

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import measure  # noqa: E402
import ppo  # noqa: E402
import tasks  # noqa: E402
from common import save_figure  # noqa: E402
from model import load_checkpoint  # noqa: E402


def best_of_n(sft_dir, reward_dir, ns, seed, max_new_tokens=48):
    """{n: {"gold", "score", "kl"}} on the held-out prompts."""
    policy, tok, _ = load_checkpoint(sft_dir, kind="chat")
    reward, _, _ = load_checkpoint(reward_dir, kind="reward")
    args = ppo.parse_args(["--seed", str(seed), "--max-new-tokens", str(max_new_tokens)])
    _, held = ppo.ppo_prompts(tok, args, policy.config.block_size)
    end, pad, N = tok.special("<|end|>"), tok.special("<|endoftext|>"), max(ns)
    answers = measure.generate(policy, [p["ids"] for p in held for _ in range(N)], max_new_tokens, 1.0, {end}, seed)
    scores, golds = [], []
    with torch.no_grad():
        for i in range(0, len(answers), 64):
            rows = range(i, min(i + 64, len(answers)))
            idx, pos, _, mask = ppo.pad_answers([held[r // N]["ids"] for r in rows], [answers[r] for r in rows], pad)
            s = ppo.last_scores(reward, idx, pos, mask)
            ended = [answers[r][-1] == end for r in rows]
            scores += [x if e else -1.0 for x, e in zip(s.tolist(), ended)]      # ppo.py's score of a cut answer
    for r, a in enumerate(answers):
        text = measure.answer_text(tok, a)
        golds.append(tasks.gold_score(held[r // N], text, a[-1] == end))
    out = {}
    for n in ns:
        best = [max(range(p * N, p * N + n), key=lambda r: scores[r]) for p in range(len(held))]
        out[n] = {"gold": sum(golds[r] for r in best) / len(best), "score": sum(scores[r] for r in best) / len(best),
                  "kl": math.log(n) - (n - 1) / n}
    return out


def spread(values):
    return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sft", default="out/sft")
    p.add_argument("--reward-model", default="out/reward")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.02, 0.0])
    p.add_argument("--ns", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--work", default="out/ppo_sweep", help="where the runs' checkpoints go")
    p.add_argument("--out", default="bench/ppo_sweep", help="the figures' prefix")
    p.add_argument("--iterations", type=int, default=0, help="PPO iterations per run; 0 = ppo.py's default")
    p.add_argument("--replot", action="store_true", help="only redraw the figure from the JSON of an earlier sweep")
    args = p.parse_args()
    if args.replot:
        saved = json.loads(Path(args.out + ".json").read_text())
        bon = {s: {int(n): v for n, v in b.items()} for s, b in saved["best_of_n"].items()}
        plot(Path(args.out + ".png"), saved["runs"], bon, args.ns)
        return
    configs = {"default (beta 0.2)": [], **{f"beta {b:g}": ["--beta", str(b)] for b in args.betas},
               "gold reward": ["--reward", "gold"]}
    runs = {}
    for name, flags in configs.items():
        for seed in args.seeds:
            out = Path(args.work) / f"{name.split(' (')[0].replace(' ', '_')}_s{seed}"
            if not (out / "meta.json").exists():
                ppo.main(["--init", args.sft, "--reward-model", args.reward_model, "--out-dir", str(out), "--seed", str(seed),
                          *(["--iterations", str(args.iterations)] if args.iterations else []), *flags])
            meta = json.loads((out / "meta.json").read_text())
            log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
            runs.setdefault(name, []).append({"seed": seed, "before": meta["metrics"]["before"], "after": meta["metrics"]["after"],
                                              "curve": [(r["kl"], r["gold"], r["score"]) for r in log]})
    bon = {seed: best_of_n(args.sft, args.reward_model, args.ns, seed) for seed in args.seeds}

    keys = [("gold", "mean"), ("reward_score", "mean"), ("kl", "mean"), ("skill", "rate"), ("refusal_harmful", "rate"),
            ("refusal_benign", "rate"), ("end", "rate")]
    table = {"SFT": {k: spread([r["before"][k][v] for r in runs["gold reward"]]) for k, v in keys}}
    for name, rs in runs.items():
        table[name] = {k: spread([r["after"][k][v] for r in rs]) for k, v in keys}
        table[name]["distinct"] = spread([r["after"]["distinct"]["share"] for r in rs])
    for n in args.ns:
        table[f"best-of-{n}"] = {k: spread([bon[s][n][k2] for s in args.seeds])
                                 for k, k2 in (("gold", "gold"), ("reward_score", "score"), ("kl", "kl"))}
    lines = ["| run | " + " | ".join(k for k, _ in keys) + " | distinct |", "|---" * (len(keys) + 2) + "|"]
    for name, row in table.items():
        cells = [f"{row[k]['mean']:.3f} ± {row[k]['sd']:.3f}" if k in row else "" for k, _ in keys]
        d = row.get("distinct")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {d['mean']:.3f} ± {d['sd']:.3f} |" if d else
                     f"| {name} | " + " | ".join(cells) + " | |")
    text = (f"Held-out (final_eval) prompts, one answer each at temperature 1; mean ± sd over seeds "
            f"{args.seeds}. KL in nats per answer (best-of-n: log n - (n-1)/n).\n\n" + "\n".join(lines) + "\n")
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps({"table": table, "runs": runs, "best_of_n": bon}, indent=1))
    print(text)

    plot(Path(args.out + ".png"), runs, bon, args.ns)


def smooth(xs, k=5):
    """The running mean over the last k points (the rollouts' figures are noisy per batch)."""
    return [sum(xs[max(0, i - k + 1):i + 1]) / len(xs[max(0, i - k + 1):i + 1]) for i in range(len(xs))]


def plot(path, runs, bon, ns):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (name, rs), c in zip(runs.items(), colours):
        for j, r in enumerate(rs):
            kl, gold, score = (smooth(list(v)) for v in zip(*r["curve"]))
            axes[0].plot(kl, gold, color=c, alpha=0.3)
            if name != "gold reward":           # its logged score is the normalised gold, not the proxy
                axes[1].plot(kl, score, color=c, alpha=0.3)
            a = r["after"]
            axes[0].scatter(a["kl"]["mean"], a["gold"]["mean"], color=c, marker="s", label=name if j == 0 else None)
            axes[1].scatter(a["kl"]["mean"], a["reward_score"]["mean"], color=c, marker="s")
    for j, points in enumerate(bon.values()):
        pts = [points[n] for n in ns]
        axes[0].plot([q["kl"] for q in pts], [q["gold"] for q in pts], "k^--", alpha=0.6, label="best-of-n" if j == 0 else None)
        axes[1].plot([q["kl"] for q in pts], [q["score"] for q in pts], "k^--", alpha=0.6)
    axes[0].set_ylabel("gold score (simulated rater)")
    axes[1].set_ylabel("reward-model score (proxy)")
    for ax in axes:
        ax.set_xlabel("KL to the SFT model (nats per answer)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("faint lines: training rollouts (ppo_train, running mean of 5 batches); squares: held-out end points;\n"
                 "triangles: best-of-n (1, 2, 4, ...) on the same held-out prompts", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


if __name__ == "__main__":
    main()
