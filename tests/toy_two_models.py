"""A toy run through the training engine with what PPO will need: two trained models (a
policy, and a value model with a scalar head), two optimizers, extra state (a KL coefficient
that changes every step, a rollout generator), and draws from every global RNG (torch, numpy,
Python). tests/test_training.py kills it with SIGKILL and resumes it, and checks that the end
is bit for bit the end of an uninterrupted run.

    python tests/toy_two_models.py OUT --steps 12 [--ckpt-every 1] [--sleep 0.05] [--resume]
or toy_two_models.main([...]) in a test's own process. Writes OUT/train_state.pt along the way and OUT/final.pt (weights, extra) at the end.
"""

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import training  # noqa: E402
from common import atomic_open  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402

MICRO = GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--ckpt-every", type=int, default=4)
    p.add_argument("--sleep", type=float, default=0.0, help="seconds per step (time to be killed)")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    policy, value = GPT(MICRO), GPT(MICRO, scalar_head=True)
    models = {"policy": policy, "value": value}
    opts = {"policy": training.AdamW(training.param_groups(policy, 0.1), 1e-3),
            "value": training.AdamW(training.param_groups(value, 0.0), 3e-3)}
    rollout = torch.Generator().manual_seed(1)
    kl = {"beta": torch.tensor(0.2), "updates": 0}
    step = 0
    if args.resume:
        step, extra = training.load_train_state(out / "train_state.pt", models, opts, "toy")
        kl = extra["kl"]
        rollout.set_state(extra["rollout_rng"])
    while step < args.steps:
        x = torch.randint(0, MICRO.vocab_size, (2, MICRO.block_size), generator=rollout)
        target = torch.randn(2, MICRO.block_size)                  # the global torch RNG
        scale = 1 + 0.1 * np.random.rand() + 0.1 * random.random()  # numpy's and Python's
        loss_p = policy(x, torch.roll(x, -1, 1)) * kl["beta"] * scale
        loss_v = ((value.scores(x) - target) ** 2).mean()
        for name, loss in (("policy", loss_p), ("value", loss_v)):
            loss.backward()
            training.clip_grad_norm(models[name].parameters(), 1.0)
            opts[name].step()
            opts[name].zero_grad()
        kl = {"beta": kl["beta"] * (1 + 0.05 * float(loss_p.detach())), "updates": kl["updates"] + 1}
        step += 1
        if step % args.ckpt_every == 0:
            training.save_train_state(out / "train_state.pt", step, models, opts, "toy",
                                      extra={"kl": kl, "rollout_rng": rollout.get_state()})
        time.sleep(args.sleep)
    with atomic_open(out / "final.pt", "wb") as f:
        torch.save({"policy": policy.state_dict(), "value": value.state_dict(), "kl": kl,
                    "adam_value_m": opts["value"].m}, f)


if __name__ == "__main__":
    main()
