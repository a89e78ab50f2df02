"""preferences.py: the reward model's score at the last real token whatever the padding, the
Bradley-Terry loss (a hand-worked example, swapped pairs, ties), learning a planted preference,
and the normalisation."""

import math

import pytest
import torch

import training
from model import GPT, GPTConfig
from preferences import Scorer, bradley_terry, normalise, score

MICRO = GPTConfig(vocab_size=32, block_size=32, n_layer=2, n_head=2, n_kv_head=2, n_embd=32)


def test_bradley_terry_worked_example():
    # scores 2.0, 0.5, 1.0 ranked 0 > 2 > 1: pairs (0, 1), (0, 2), (2, 1), margins 1.5, 1.0, 0.5
    scores = torch.tensor([2.0, 0.5, 1.0])
    hand = (math.log(1 + math.exp(-1.5)) + math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(-0.5))) / 3
    assert bradley_terry(scores, [(0, 1), (0, 2), (2, 1)]).item() == pytest.approx(hand, rel=1e-6)
    assert hand == pytest.approx((0.20141 + 0.31326 + 0.47408) / 3, abs=1e-5)      # by hand: 0.32958


def grad_of(scores, pairs):
    s = torch.tensor(scores, requires_grad=True)
    bradley_terry(s, pairs).backward()
    return s.grad


def test_swapping_chosen_and_rejected_flips_the_gradient():
    g, swapped = grad_of([0.3, -0.4], [(0, 1)]), grad_of([0.3, -0.4], [(1, 0)])
    assert (torch.sign(g) == -torch.sign(swapped)).all() and g[0] < 0 < g[1]      # descent raises the winner
    assert torch.allclose(grad_of([0.2, 0.2], [(0, 1)]), -grad_of([0.2, 0.2], [(1, 0)]))   # equal scores: exactly


def test_ties_carry_no_loss():
    assert bradley_terry(torch.tensor([1.0, 1.0]), []).item() == 0
    assert torch.equal(grad_of([0.5, -1.0, 2.0], []), torch.zeros(3))
    # ranks 0, 0, 1: the tied pair (0, 1) is not a pair; the loss is that of the other two
    scores = torch.tensor([0.5, -1.0, 2.0])
    both = bradley_terry(scores, [(0, 2), (1, 2)])
    assert both.item() == pytest.approx((-torch.nn.functional.logsigmoid(scores[0] - scores[2])
                                         - torch.nn.functional.logsigmoid(scores[1] - scores[2])).item() / 2)


def test_the_score_of_a_padded_batch_is_each_sequence_s_own():
    torch.manual_seed(0)
    scorer = Scorer(GPT(MICRO, scalar_head=True)).eval()
    seqs = [[1, 5, 9], [3] * 7, list(range(2, 14))]
    alone = torch.cat([score(scorer, [s], pad_id=0) for s in seqs])
    for side in ("right", "left"):
        assert torch.allclose(score(scorer, seqs, pad_id=0, side=side), alone, atol=1e-5), side
    # the padding token is not special: another one gives the same scores
    assert torch.allclose(score(scorer, seqs, pad_id=31, side="left"), alone, atol=1e-5)


def test_a_reward_model_learns_a_planted_preference():
    """Answers holding more 7s win. Trained on pairs for 300 steps, the model ranks held-out
    pairs it never saw."""
    torch.manual_seed(0)
    model = GPT(MICRO, scalar_head=True)
    scorer = Scorer(model)
    opt = training.AdamW(training.param_groups(model, 0.0), 3e-3)
    gen = torch.Generator().manual_seed(1)

    def pair():
        a, b = torch.randint(0, 32, (2, 12), generator=gen)
        a[torch.rand(12, generator=gen) < 0.3] = 7             # a holds more 7s, most of the time
        na, nb = int((a == 7).sum()), int((b == 7).sum())
        return (a.tolist(), b.tolist()) if na > nb else (b.tolist(), a.tolist()) if nb > na else pair()

    for _ in range(300):
        batch = [pair() for _ in range(8)]
        s = score(scorer, [x for p in batch for x in p], pad_id=0).view(8, 2)
        loss = sum(bradley_terry(row, [(0, 1)]) for row in s) / 8
        loss.backward()
        opt.step()
        opt.zero_grad()
    scorer.eval()
    with torch.no_grad():
        held = [pair() for _ in range(200)]
        s = score(scorer, [x for p in held for x in p], pad_id=0).view(200, 2)
    assert (s[:, 0] > s[:, 1]).float().mean() > 0.9


def test_normalisation_gives_mean_0_and_std_1():
    torch.manual_seed(0)
    scorer = Scorer(GPT(MICRO, scalar_head=True)).eval()
    seqs = [torch.randint(0, 32, (int(n),)).tolist() for n in torch.randint(2, 20, (64,))]
    with torch.no_grad():
        before = score(scorer, seqs, pad_id=0)
        normalise(scorer.model.head, before)
        after = score(scorer, seqs, pad_id=0)
        assert after.mean().item() == pytest.approx(0, abs=1e-5) and after.std().item() == pytest.approx(1, abs=1e-5)
        # and again: normalising normalised scores changes nothing
        normalise(scorer.model.head, after)
        assert torch.allclose(score(scorer, seqs, pad_id=0), after, atol=1e-5)
    # the order of the scores is unchanged (a positive gain)
    assert torch.equal(before.argsort(), after.argsort())
