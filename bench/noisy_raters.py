"""What noisy raters cost: the reward model trained on rankings made from the gold scores plus
Gaussian noise, at a few noise levels.

For each sigma: every training answer's gold score (tasks.gold_score) gets N(0, sigma^2) noise
before the answers are ranked; the reward model is trained on those rankings exactly as
reward.py trains it (one epoch, Bradley-Terry, the SFT trunk) and scored on the held-out
rankings of the noiseless gold rater. Printed per level: the noisy raters' agreement with gold
on the pairs gold does not tie (InstructGPT reports about 73% agreement between its labellers),
and the reward model's held-out pair accuracy with its Wilson interval.

Run (after run.sh, or any reward.py run, which wrote the samples):
    python bench/noisy_raters.py --reward-dir out/reward --init out/sft
"""

import argparse
import random
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import measure  # noqa: E402
import rankings  # noqa: E402
import reward  # noqa: E402
import tasks  # noqa: E402
import training  # noqa: E402
from model import GPT, load_checkpoint  # noqa: E402
from preferences import Scorer  # noqa: E402


def ranks_of(scores):
    levels = sorted(set(scores), reverse=True)
    return [levels.index(s) for s in scores]


def train_and_measure(policy, tok, train, held, seed, lr=1e-3, batch=8):
    torch.manual_seed(seed)
    model = GPT(policy.config, scalar_head=True)
    model.load_state_dict(policy.state_dict(), strict=False)
    scorer = Scorer(model)
    opt = training.AdamW(training.param_groups(model, 0.0), lr)
    order = random.Random(seed).sample(train, len(train))
    steps = -(-len(order) // batch)
    for step in range(steps):
        opt.lr = training.lr_at(step, lr, 10, steps, 0.1)
        loss = reward.step_loss(scorer, tok, order[step * batch:(step + 1) * batch], policy.config.block_size, "cpu")
        loss.backward()
        training.clip_grad_norm(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
    model.eval()
    scores = reward.scores_of(scorer, tok, held, policy.config.block_size, "cpu")
    return reward.held_out_figures(held, scores, None)["pair_accuracy"]["all"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reward-dir", default="out/reward", help="a reward.py run's directory (its samples.jsonl)")
    p.add_argument("--init", default="out/sft", help="the SFT checkpoint it started from")
    p.add_argument("--sigmas", default="0,0.1,0.2,0.4", help="noise levels, comma-separated")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    policy, tok, _ = load_checkpoint(args.init, kind="chat")
    samples = rankings.read_samples(Path(args.reward_dir) / "samples.jsonl")
    pool = {p["id"]: p for p in tasks.prompt_pool()}
    pool.update({p["id"]: p for p in reward.demos.general_prompts(reward.demos.load_demonstrations(("chatterbot", "triviaqa", "nq_open")))})
    gold = {s["prompt_id"]: [tasks.gold_score(pool[s["prompt_id"]], a, e) for a, e in zip(s["answers"], s["ended"])]
            for s in samples}
    held = [rankings.ranking(s, ranks_of(gold[s["prompt_id"]]), "simulated") for s in samples if s["split"] == "rm_eval"]
    rng = np.random.default_rng(args.seed)
    print(f"{len(samples)} prompts; held out: {len(held)} gold rankings")
    print("| noise sigma | raters' agreement with gold | reward model's held-out pair accuracy |")
    print("|---:|---:|---:|")
    for sigma in [float(x) for x in args.sigmas.split(",")]:
        train, agree = [], []
        for s in samples:
            if s["split"] != "rm_train":
                continue
            g = gold[s["prompt_id"]]
            noisy = [x + rng.normal(0, sigma) if sigma else x for x in g]
            train.append(rankings.ranking(s, ranks_of(noisy), f"noisy:{sigma}"))
            agree += [(noisy[w] > noisy[lose]) for w, lose in rankings.untied_pairs(ranks_of(g))]
        acc = train_and_measure(policy, tok, train, held, args.seed)
        print(f"| {sigma:g} | {np.mean(agree):.3f} (n={len(agree)}) | {measure.format_rate(acc)} |", flush=True)


if __name__ == "__main__":
    main()
