"""rlhf.py's pieces by hand: GAE against a brute-force sum of discounted TD errors, the clipped
losses on a worked example, whitening, the per-token rewards, the exact KL and entropy against
torch's own, explained variance, one step of the adaptive KL controller."""

import math

import pytest
import torch
import torch.nn.functional as F

import rlhf


def test_gae_equals_the_brute_force_sum_of_discounted_td_errors():
    torch.manual_seed(0)
    B, T, gamma, lam = 3, 6, 0.9, 0.8
    rewards, values = torch.randn(B, T), torch.randn(B, T)
    lengths = [6, 3, 1]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths])
    advantages, returns = rlhf.gae(rewards * mask, values * mask, mask, gamma, lam)
    for b, n in enumerate(lengths):
        v = values[b, :n].tolist() + [0.0]                          # V(s_T) = 0 at the end
        delta = [rewards[b, t].item() + gamma * v[t + 1] - v[t] for t in range(n)]
        for t in range(T):
            want = sum((gamma * lam) ** k * delta[t + k] for k in range(n - t)) if t < n else 0.0
            assert advantages[b, t].item() == pytest.approx(want, abs=1e-5)
            assert returns[b, t].item() == pytest.approx(want + (v[t] if t < n else 0.0), abs=1e-5)


def test_gae_with_gamma_1_and_lambda_1_is_the_return_minus_the_value():
    rewards = torch.tensor([[0.1, -0.2, 1.0]])
    values = torch.tensor([[0.5, 0.3, 0.2]])
    advantages, returns = rlhf.gae(rewards, values, torch.ones(1, 3), 1.0, 1.0)
    assert returns.tolist()[0] == pytest.approx([0.9, 0.8, 1.0])             # the sums of what follows
    assert advantages.tolist()[0] == pytest.approx([0.4, 0.5, 0.8])


def test_the_clipped_policy_loss_worked_example():
    # ratios e^0.5 = 1.65 (clipped to 1.2), 1, e^-0.5 = 0.61 (clipped to 0.8); advantages +1, +1, -1
    old = torch.zeros(1, 3)
    new = torch.tensor([[0.5, 0.0, -0.5]])
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = rlhf.policy_loss(new, old, adv, torch.ones(1, 3), clip=0.2)
    # max(-A r, -A clip(r)): -1.2 (the clip binds: no credit past 1 + eps), -1, max(0.61, 0.8) = 0.8
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 0.8) / 3, abs=1e-6)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    assert stats["ratio"] == pytest.approx((math.exp(0.5) + 1 + math.exp(-0.5)) / 3)
    assert stats["approx_kl"] == pytest.approx(0.5 * (0.25 + 0 + 0.25) / 3)
    # a negative advantage whose ratio grew: the unclipped term is the larger, and it counts
    loss, stats = rlhf.policy_loss(torch.tensor([[0.5]]), torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.exp(0.5)) and stats["clip_fraction"] == 0
    # at the rollout's own log-probabilities the ratio is 1 and the approximate KL 0
    _, stats = rlhf.policy_loss(old, old, adv, torch.ones(1, 3))
    assert stats["ratio"] == 1 and stats["approx_kl"] == 0 and stats["clip_fraction"] == 0


def test_the_clipped_value_loss_worked_example():
    old, returns = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 1.0]])
    values = torch.tensor([[1.0, 0.1]])
    # token 1: V moved 1.0 but the clip keeps 0.2: max((1-1)^2, (0.2-1)^2) = 0.64
    # token 2: inside the clip: max(0.81, 0.81)
    loss = rlhf.value_loss(values, old, returns, torch.ones(1, 2), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)


def test_whitening_gives_mean_0_and_std_1_over_the_mask_and_zero_padding():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    w = rlhf.whiten(x, mask)
    real = w[mask.bool()]
    assert real.mean().item() == pytest.approx(0, abs=1e-6)
    assert (real ** 2).mean().item() == pytest.approx(1, abs=1e-5)            # population variance
    assert w[1, 1:].tolist() == [0, 0]
    kept = rlhf.whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(2.5, abs=1e-5)


def test_token_rewards_worked_example():
    logp, ref = torch.tensor([[-1.0, -2.0, -0.5], [-1.0, -3.0, 0.0]]), torch.tensor([[-1.5, -2.0, -1.0], [-1.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = rlhf.token_rewards(torch.tensor([2.0, -1.0]), logp, ref, mask, beta=0.1)
    assert kl.tolist() == [[0.5, 0.0, 0.5], [0.0, -2.0, 0.0]]
    assert rewards.tolist()[0] == pytest.approx([-0.05, 0.0, -0.05 + 2.0])
    assert rewards.tolist()[1] == pytest.approx([0.0, 0.2 - 1.0, 0.0])       # the score at the last real token


def test_entropy_and_exact_kl_against_torch():
    torch.manual_seed(1)
    logits, ref = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    mask = torch.tensor([[1.0, 1, 1, 1], [1, 1, 0, 0]])
    entropy, kl = rlhf.entropy_and_kl(logits, ref, mask)
    p = torch.distributions.Categorical(logits=logits)
    want_h = (p.entropy() * mask).sum(1)
    want_kl = (F.kl_div(torch.log_softmax(ref, -1), torch.log_softmax(logits, -1), log_target=True, reduction="none")
               .sum(-1) * mask).sum(1)
    assert torch.allclose(entropy, want_h, atol=1e-5) and torch.allclose(kl, want_kl, atol=1e-5)
    assert (kl >= 0).all()


def test_explained_variance():
    returns, mask = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.ones(1, 4)
    assert rlhf.explained_variance(returns, returns, mask) == pytest.approx(1)
    assert rlhf.explained_variance(torch.full((1, 4), 2.5), returns, mask) == pytest.approx(0)
    assert rlhf.explained_variance(-returns, returns, mask) == pytest.approx(1 - 4)        # Var(2R) / Var(R)


def test_one_step_of_the_adaptive_kl_controller_by_hand():
    ctl = rlhf.KLController(0.2, target=6.0, horizon=1000)
    # KL 9 overshoots by 50%, clipped to 20%: beta * (1 + 0.2 * 64 / 1000)
    assert ctl.update(9.0, 64) == pytest.approx(0.2 * (1 + 0.2 * 0.064))
    before = ctl.beta
    assert ctl.update(5.4, 100) == pytest.approx(before * (1 - 0.1 * 0.1))     # undershoot by 10%
    fixed = rlhf.KLController(0.2)
    assert fixed.update(100.0, 64) == 0.2
    again = rlhf.KLController(1.0)
    again.load_state_dict(ctl.state_dict())
    assert again.beta == ctl.beta and again.target == 6.0
