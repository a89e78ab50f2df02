"""training.py, the engine every training stage shares: the optimizer, clipping and schedule
against references, the autocast policy, every RNG's round trip, and the training state with
two models and two optimizers killed and resumed bit for bit."""

import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import toy_two_models
from processes import signal_once_written
import training
from common import StageError
from model import GPT, GPTConfig

ROOT = Path(__file__).resolve().parent.parent
MICRO = GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)


# ----------------------------------------------------------------------------- the maths

def test_adamw_equals_torch_over_100_steps():
    torch.manual_seed(0)
    ours_model, ref_model = GPT(MICRO), GPT(MICRO)
    ref_model.load_state_dict(ours_model.state_dict())
    ours = training.AdamW(training.param_groups(ours_model, 0.1), lr=1e-2, betas=(0.9, 0.95))
    ref = torch.optim.AdamW([{"params": p, "weight_decay": wd} for p, wd in training.param_groups(ref_model, 0.1)],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    x = torch.randint(0, 64, (4, 32))
    for step in range(100):
        lr = 1e-2 * (1 - step / 200)                  # a changing learning rate, as in training
        ours.lr = lr
        for g in ref.param_groups:
            g["lr"] = lr
        for model in (ours_model, ref_model):
            model(x, torch.roll(x, -1, 1)).backward()
        ours.step()
        ref.step()
        ours.zero_grad()
        ref.zero_grad()
    for a, b in zip(ours_model.parameters(), ref_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


def test_param_groups_decay_only_matrices():
    model = GPT(MICRO)
    (decay, _), (no_decay, _) = training.param_groups(model, 0.1)
    assert model.tok_emb.weight in no_decay                     # tied with the LM head
    assert all(p.dim() == 2 for p in decay) and all(p.dim() == 1 or p is model.tok_emb.weight for p in no_decay)
    assert len(decay) + len(no_decay) == len(list(model.parameters()))


def test_clipping_equals_torch():
    torch.manual_seed(1)
    a = [torch.randn(5, 3, requires_grad=True), torch.randn(7, requires_grad=True)]
    b = [t.detach().clone().requires_grad_() for t in a]
    for t, u in zip(a, b):
        t.grad = torch.randn_like(t) * 3
        u.grad = t.grad.clone()
    ours = training.clip_grad_norm(a, 1.0)
    ref = torch.nn.utils.clip_grad_norm_(b, 1.0)
    assert torch.allclose(ours, ref)
    for t, u in zip(a, b):
        assert torch.allclose(t.grad, u.grad, atol=1e-7)
    assert training.clip_grad_norm(a, 100.0) <= 1.0 + 1e-5          # already clipped: unchanged


def test_schedule_at_hand_checked_steps():
    def lr(s):
        return training.lr_at(s, max_lr=1.0, warmup=10, max_steps=110, min_frac=0.1)
    assert lr(0) == pytest.approx(0.1) and lr(4) == pytest.approx(0.5) and lr(9) == pytest.approx(1.0)
    assert lr(10) == pytest.approx(1.0)                           # cosine starts at the peak
    assert lr(60) == pytest.approx(0.55)                          # half way: (1 + 0.1) / 2
    assert lr(110) == pytest.approx(0.1) and lr(500) == pytest.approx(0.1)


def test_autocast_policy():
    assert training.resolve_dtype("auto", "cpu") == "fp32" and training.resolve_dtype("auto", "cuda:1") == "bf16"
    assert training.resolve_dtype("bf16", "cpu") == "bf16" and training.resolve_dtype("fp32", "cuda") == "fp32"
    with training.autocast("cpu", "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with training.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_non_finite_stop_says_where_the_last_checkpoint_is(tmp_path):
    training.stop_if_not_finite(1.5, torch.tensor(2.0), 3, tmp_path)        # finite: no stop
    with pytest.raises(StageError, match="the loss became nan at step 3; no checkpoint was written"):
        training.stop_if_not_finite(float("nan"), torch.tensor(2.0), 3, tmp_path)
    (tmp_path / "train_state.pt").write_bytes(b"x")
    with pytest.raises(StageError, match=f"the last good checkpoint is in {tmp_path}"):
        training.stop_if_not_finite(1.0, torch.tensor(float("inf")), 3, tmp_path)


# ----------------------------------------------------------------------------- the state

def test_every_rng_round_trips():
    state = training.rng_state()
    draws = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.rand(5), np.random.rand(5), random.random()            # move every RNG on
    training.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_a_state_holding_other_models_is_refused(tmp_path):
    torch.manual_seed(0)
    a, b = GPT(MICRO), GPT(MICRO)
    opt = training.AdamW(training.param_groups(a, 0.1), 1e-3)
    training.save_train_state(tmp_path / "s.pt", 3, {"policy": a}, {"policy": opt}, "tok")
    with pytest.raises(StageError, match="holds models .'policy'. .* this stage trains .'policy', 'value'."):
        training.load_train_state(tmp_path / "s.pt", {"policy": a, "value": b}, {"policy": opt}, "tok")
    with pytest.raises(StageError, match="another tokenizer"):
        training.load_train_state(tmp_path / "s.pt", {"policy": a}, {"policy": opt}, "other")
    wide = GPT(GPTConfig(vocab_size=64, block_size=32, n_layer=2, n_head=4, n_kv_head=2, n_embd=64))
    with pytest.raises(StageError, match="holds a policy of another shape"):
        training.load_train_state(tmp_path / "s.pt", {"policy": wide},
                                  {"policy": training.AdamW(training.param_groups(wide, 0.1), 1e-3)}, "tok")
    step, extra = training.load_train_state(tmp_path / "s.pt", {"policy": b}, {"policy": opt}, "tok")
    assert step == 3 and extra == {} and all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_two_models_and_two_optimizers_killed_and_resumed_bitwise(tmp_path):
    """PPO's shape of state: a policy and a value model, an optimizer each, a KL coefficient
    and a rollout generator in `extra`, and draws from torch's, numpy's and Python's RNGs.
    The uninterrupted and the resumed run go in this process; the killed one is a process of
    its own, SIGKILLed once its first state is on disk."""
    toy_two_models.main([str(tmp_path / "full"), "--steps", "12"])
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "toy_two_models.py"), str(out), "--steps", "12",
                             "--ckpt-every", "1", "--sleep", "0.2"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    signal_once_written(proc, out / "train_state.pt", signal.SIGKILL, timeout=60)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 0 < torch.load(out / "train_state.pt", weights_only=True)["step"] < 12
    toy_two_models.main([str(out), "--steps", "12", "--ckpt-every", "1", "--resume"])
    a, b = (torch.load(d / "final.pt", weights_only=True) for d in (tmp_path / "full", out))
    for name in ("policy", "value"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert "head.weight" in a["value"] and a["kl"]["updates"] == b["kl"]["updates"] == 12
    assert torch.equal(a["kl"]["beta"], b["kl"]["beta"])
    assert all(torch.equal(m, n) for m, n in zip(a["adam_value_m"], b["adam_value_m"]))
