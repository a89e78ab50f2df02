"""What a reward model is made of, shared by the reward stage (which trains one) and PPO (which
optimises against it): a score per sequence, the Bradley-Terry loss over a ranking, and the
normalisation of the scores.

    the score     the scalar head (model.ScalarHead) read at the last real token of prompt +
                  answer, whatever the padding: on the right, the causal mask already keeps
                  the real tokens from seeing it; on the left, an attention mask hides it and,
                  since rotary embeddings see only distances, nothing else changes
    the loss      Bradley-Terry (Bradley & Terry 1952; InstructGPT, Ouyang et al. 2022): the
                  probability that answer w beats answer l is sigmoid(r_w - r_l), so over the
                  untied pairs (w, l) of one prompt's ranking
                      loss = mean over pairs of -log sigmoid(r_w - r_l)
                  All K answers of a prompt are scored in one pass and all its pairs are taken
                  together, as one batch element (InstructGPT: the C(K, 2) pairs of a prompt
                  in one batch element, so that none overfits by being seen in many batches);
                  tied pairs say nothing about who wins: neither trained on nor scored
    normalising   after training, the head's gain and shift are set so that its scores of the
                  policy's own answers have mean 0 and standard deviation 1: then PPO's KL
                  coefficient means the same thing whatever the reward run

References: Bradley & Terry 1952; Christiano et al. 2017; Stiennon et al. 2020; Ouyang et al.
2022; OpenAI's lm-human-preferences (the head's initialisation and the normalisation).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class Scorer(nn.Module):
    """The reward model as a module whose forward is the score (B,) of a batch of sequences:
    what DDP (training.wrap) wraps, so that gradients sync as in any forward/backward."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, idx, last, mask=None):
        """idx (B, T), last (B,): the index of each row's last real token; mask: generation's
        attention mask (B, 1, T, T) when the padding is on the left."""
        return self.model.head(self.model.hidden(idx, mask=mask))[torch.arange(idx.shape[0]), last]   # (B,)


def batch(seqs, pad_id, side="right"):
    """(idx, last, mask) of token lists padded to a common length on `side`: `last` the index
    of each row's last real token, `mask` None on the right, else (B, 1, T, T) causal and
    blind to the padding (a padding query sees itself, so no row is all masked)."""
    T = max(len(s) for s in seqs)
    idx = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    real = torch.zeros(len(seqs), T, dtype=torch.bool)
    for b, s in enumerate(seqs):
        where = slice(0, len(s)) if side == "right" else slice(T - len(s), T)
        idx[b, where], real[b, where] = torch.tensor(s, dtype=torch.long), True
    if side == "right":
        return idx, torch.tensor([len(s) - 1 for s in seqs]), None
    pos = torch.arange(T)
    causal = pos[None, :] <= pos[:, None]                                       # (T, T): key <= query
    mask = causal[None, None] & (real[:, None, None, :] | torch.eye(T, dtype=torch.bool)[None, None])
    return idx, torch.full((len(seqs),), T - 1), mask


def score(scorer, seqs, pad_id, side="right", device="cpu"):
    """The scores (B,) of token lists, padded on `side`."""
    idx, last, mask = batch(seqs, pad_id, side)
    return scorer(idx.to(device), last.to(device), None if mask is None else mask.to(device))


def bradley_terry(scores, pairs):
    """Mean over the untied pairs (w, l) of one prompt of -log sigmoid(r_w - r_l); scores (K,),
    pairs [(winner, loser), ...]. No pair (every answer tied): 0, and no gradient."""
    if not pairs:
        return scores.sum() * 0.0
    w = torch.tensor([p[0] for p in pairs], device=scores.device)
    lose = torch.tensor([p[1] for p in pairs], device=scores.device)
    return -F.logsigmoid(scores[w] - scores[lose]).mean()


@torch.no_grad()
def normalise(head, scores):
    """Set the head's gain and shift so that these scores, made by the head as it is now, get
    mean 0 and standard deviation 1. The head computes gain * raw + shift, raw = w . h + b; from
    raw = (s - shift) / gain the new gain is 1 / std(raw) and the new shift -mean(raw) / std(raw)."""
    raw = (scores - head.shift) / head.gain
    mean, std = raw.mean(), raw.std().clamp(min=1e-6)
    head.gain.fill_(1 / std)
    head.shift.fill_(-mean / std)
