"""What PPO for RLHF is made of, each piece a small pure function: the per-token rewards, the
advantages, the clipped losses, and the KL coefficient's controller. ppo.py runs them; the
tests check each one by hand.

An answer is a sequence of actions: the policy pi writes token a_t in state s_t (the prompt
and the answer so far), t = 0 .. T-1, and the episode ends at <|end|> or the length limit.

    rewards      only the last token earns the reward model's score; every token pays for
                 straying from the reference model (the SFT model) by
                     r_t = -beta * (log pi(a_t | s_t) - log ref(a_t | s_t))  (+ score at t = T-1)
                 whose expectation over a_t is beta * KL(pi || ref) at s_t. This sampled form,
                 not the exact full-vocabulary KL, goes into the reward (as in OpenAI's
                 lm-human-preferences): the policy-gradient estimator then sees the penalty's
                 dependence on the action taken; the exact KL is what ppo.py logs.
    advantages   generalised advantage estimation (Schulman et al. 2016), with V(s_T) = 0:
                     delta_t = r_t + gamma V(s_{t+1}) - V(s_t)
                     A_t     = sum_l (gamma lambda)^l delta_{t+l}      returns R_t = A_t + V(s_t)
                 then whitened over the batch (mean 0, std 1) for the policy loss only
    policy loss  PPO's clipped surrogate (Schulman et al. 2017), ratio = pi_new / pi_old:
                     L = mean_t max(-A_t ratio_t, -A_t clip(ratio_t, 1 - eps, 1 + eps))
    value loss   clipped the same way around the rollout's values V_old:
                     V_clip = V_old + clip(V - V_old, -eps_v, eps_v)
                     L_V = 0.5 mean_t max((V - R)^2, (V_clip - R)^2)
    beta         fixed, or adaptive (Ziegler et al. 2019; lm-human-preferences): after each
                 batch with mean KL k, e = clip(k / target - 1, -0.2, 0.2) and
                     beta <- beta (1 + e n / horizon)
                 where n is the batch's number of answers: beta rises when the KL overshoots
                 its target and falls when it undershoots, at a speed set by the horizon

Every "mean_t" is over the real answer tokens only: `mask` (B, T) is 1 on them and 0 on the
padding after an answer that ended early.

References: Schulman et al. 2016 (GAE), 2017 (PPO); Ziegler et al. 2019 and OpenAI's
lm-human-preferences (the KL penalty, its controller, the value clipping); Stiennon et al.
2020; Ouyang et al. 2022 (InstructGPT); Huang et al. 2022, "The 37 implementation details of
PPO" (the whitening, the value clipping, the approximate KL).
"""

import torch


def masked_mean(x, mask):
    """The mean of x over the positions where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)


def whiten(x, mask, shift_mean=True):
    """x scaled to mean 0 and standard deviation 1 over the masked positions (the padding set
    to 0); shift_mean=False keeps the mean (scales only)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def token_rewards(score, logprobs, ref_logprobs, mask, beta):
    """(rewards (B, T), the per-token KL estimate (B, T)): -beta * (log pi - log ref) at every
    answer token, and the score (B,) added at each answer's last real token."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -beta * kl
    last = mask.sum(1).long() - 1                                              # (B,)
    rewards[torch.arange(len(score)), last] += score
    return rewards, kl


def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    """(advantages, returns), both (B, T): delta_t = r_t + gamma V_{t+1} - V_t and
    A_t = delta_t + gamma lam A_{t+1}, computed backwards; past an answer's end, V = 0 and
    nothing flows back (mask)."""
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)
    next_adv = torch.zeros_like(next_value)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = (delta + gamma * lam * next_adv) * m
        advantages[:, t] = adv
        next_value, next_adv = values[:, t] * m, adv                           # 0 beyond the end
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, clip=0.2):
    """(the clipped surrogate loss, stats): stats are the mean probability ratio, the share of
    tokens whose ratio was clipped, and the approximate KL 0.5 mean (log ratio)^2 between the
    old and the new policy (lm-human-preferences' estimate)."""
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip, 1 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"ratio": masked_mean(ratio, mask).item(),
                 "clip_fraction": masked_mean((clipped > unclipped).float(), mask).item(),
                 "approx_kl": masked_mean(0.5 * log_ratio ** 2, mask).item()}
    return loss, stats


def value_loss(values, old_values, returns, mask, clip=0.2):
    """0.5 mean max((V - R)^2, (V_clip - R)^2), V_clip = V_old + clip(V - V_old, -clip, clip)."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def explained_variance(values, returns, mask):
    """1 - Var(R - V) / Var(R) over the masked positions: 1 is a perfect value function, 0 one
    no better than the mean return, below 0 worse than it."""
    var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
    err = returns - values
    var_e = masked_mean((err - masked_mean(err, mask)) ** 2, mask)
    return (1 - var_e / var_r.clamp(min=1e-12)).item()


def entropy_and_kl(logits, ref_logits, mask):
    """(entropy, exact KL(pi || ref)), each summed over an answer's tokens (B,): the full
    distributions over the vocabulary at every answer position, logits (B, T, V)."""
    logp, logq = torch.log_softmax(logits.float(), -1), torch.log_softmax(ref_logits.float(), -1)
    p = logp.exp()
    entropy = -(p * logp).sum(-1)                                              # (B, T)
    kl = (p * (logp - logq)).sum(-1)
    return (entropy * mask).sum(1), (kl * mask).sum(1)


class KLController:
    """beta, fixed (target=None) or adaptive toward a target KL per answer (nats):
    beta <- beta (1 + clip(kl / target - 1, -0.2, 0.2) n / horizon) after each batch of n answers."""

    def __init__(self, beta, target=None, horizon=10000):
        self.beta, self.target, self.horizon = float(beta), target, horizon

    def update(self, kl, n):
        if self.target is None:
            return self.beta
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.beta *= 1 + error * n / self.horizon
        return self.beta

    def state_dict(self):
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state):
        self.beta, self.target, self.horizon = state["beta"], state["target"], state["horizon"]
