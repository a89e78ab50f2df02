"""The GPT every stage uses: a decoder-only transformer, its generation loop, its checkpoints.

    idx (B, T) -> token embedding -> n_layer x [ x + attn(norm(x)); x + mlp(norm(x)) ]
               -> norm -> LM head (tied to the embedding by default) -> logits (B, T, vocab)

- RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * w, computed in fp32.
  Attention, RMSNorm, the SwiGLU gate and the loss go through kernels/: fused Triton kernels on CUDA,
  their PyTorch twins elsewhere (kernels.set_backend, train.py --kernels, overrides).
- Causal self-attention with rotary position embeddings (Su et al. 2021): each query/key pair
  of channels is rotated by an angle proportional to the position, so q.k depends only on
  the distance between tokens. Optional grouped-query attention (Ainslie et al. 2023):
  n_kv_head < n_head key/value heads, each shared by n_head / n_kv_head query heads.
- SwiGLU MLP (Shazeer 2020): w2(silu(w1 x) * w3 x), hidden size ~8/3 n_embd.
- No biases anywhere; pre-norm residual blocks.
- Initialisation: N(0, 0.02) everywhere, except the two projections that write into the
  residual stream (attention output, MLP w2), which get 0.02 / sqrt(2 n_layer): each block
  adds two terms to the residual, so its variance stays ~1 whatever the depth (GPT-2).

`forward(idx, targets)` returns (logits, loss) with the loss ignoring targets of -100 (SFT
masks prompts that way); `forward(idx, return_hidden=True)` returns the final hidden states
for a scalar head (reward model, PPO's value head). `generate` samples with a KV cache.
`save_checkpoint` / `load_checkpoint` are the one checkpoint format of every stage.

References: Vaswani et al. 2017; Radford et al. 2019 (GPT-2); Touvron et al. 2023 (LLaMA's
RMSNorm + RoPE + SwiGLU recipe); nanoGPT.
"""

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from common import StageError, atomic_open
from tokenizer import Tokenizer

IGNORE_INDEX = -100


@dataclass
class GPTConfig:
    vocab_size: int = 8192
    block_size: int = 256          # longest context the model is trained on
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4             # < n_head: grouped-query attention
    n_embd: int = 128
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True    # LM head shares the token embedding matrix

    def __post_init__(self):
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd {self.n_embd} must split into {self.n_head} heads of even size")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} must be a multiple of n_kv_head {self.n_kv_head}")

    @property
    def head_dim(self):
        return self.n_embd // self.n_head

    @property
    def mlp_hidden(self):
        return 32 * math.ceil(8 * self.n_embd / 3 / 32)     # ~8/3 n_embd, a multiple of 32


# Named sizes. tiny: the CPU default (trains in minutes on 2 cores); small: ~30M parameters
# with an 8k vocabulary; gpt2*: the GPT-2 shapes (124M, 350M, 774M with GPT-2's vocabulary).
PRESETS = {
    "tiny": dict(n_layer=4, n_head=4, n_kv_head=4, n_embd=128, block_size=256),
    "small": dict(n_layer=8, n_head=8, n_kv_head=8, n_embd=512, block_size=512),
    "gpt2": dict(n_layer=12, n_head=12, n_kv_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_kv_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_kv_head=20, n_embd=1280, block_size=1024),
}


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return kernels.rms_norm(x, self.weight, self.eps)      # in fp32 even under bf16 autocast


def rope_tables(head_dim, length, theta):
    """cos and sin of angle pos * theta^(-2i/head_dim) for channel pair i: (length, head_dim/2)."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate channel pairs (x1[i], x2[i]) of x (B, H, T, D) by the position's angle.
    cos, sin: (T, D/2). The halves convention: x1 = x[..., :D/2], x2 = x[..., D/2:]."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
    return out.type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.wq = nn.Linear(cfg.n_embd, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.n_embd, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.n_embd, bias=False)
        self.wo.residual = True

    def forward(self, x, cos, sin, cache=None, mask=None):
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:                            # generation: append, attend to all
            k, v = cache.update(k, v)
        if mask is None:                                 # training, scoring: causal, fused on CUDA
            y = kernels.attention(q, k, v, causal=True)
        else:                                            # generation: padding and cache mask
            if self.n_kv_head != self.n_head:            # each kv head serves a group of queries
                k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
                v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))                        # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.w3 = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.w2 = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)
        self.w2.residual = True

    def forward(self, x):
        return self.w2(kernels.swiglu(self.w1(x), self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, cache=None, mask=None):
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, mask)
        return x + self.mlp(self.mlp_norm(x))


class KVCache:
    """Keys and values of the tokens seen so far, for one layer: (B, Hkv, max_len, D)."""

    def __init__(self, B, n_kv_head, max_len, head_dim, device, dtype):
        self.k = torch.zeros(B, n_kv_head, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.len = 0

    def update(self, k, v):
        T = k.shape[2]
        self.k[:, :, self.len:self.len + T] = k
        self.v[:, :, self.len:self.len + T] = v
        self.len += T
        return self.k[:, :, :self.len], self.v[:, :, :self.len]


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight
        cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            std = 0.02
            if getattr(module, "residual", False):
                std = 0.02 / math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def num_params(self):
        """Parameters, the tied embedding/LM head counted once."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx, targets=None, return_hidden=False, caches=None, mask=None, start=0,
                return_logits=True):
        """idx (B, T) -> (logits (B, T, V), loss or None), or the hidden states (B, T, C).

        targets (B, T) with IGNORE_INDEX where no loss is wanted; the loss is the mean
        cross-entropy over the other positions. return_logits=False (a training step, which
        needs only the loss) returns (None, loss) from the fused LM head + loss, which on a
        GPU never stores the (B*T, V) logits. caches/mask/start are for `generate`.
        """
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.tok_emb(idx)                                                     # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, caches[i] if caches else None, mask)
        x = self.norm(x)
        if return_hidden:
            return x
        if targets is not None and not return_logits:
            loss = kernels.linear_cross_entropy(x.view(B * T, -1), self.lm_head.weight, targets.reshape(-1),
                                                IGNORE_INDEX)
            return None, loss
        logits = self.lm_head(x)                                                  # (B, T, V)
        loss = None
        if targets is not None:
            loss = kernels.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), IGNORE_INDEX)
        return logits, loss

    # ------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                 stop_tokens=(), generator=None):
        """Sample continuations of a batch of prompts (lists of ids, any lengths).

        Prompts are left-padded to a common length; padded keys are masked out, and since
        rotary embeddings only see distances, the padding shifts nothing. Each step feeds one
        token per sequence and attends to the KV cache. A sequence stops at a stop token (kept)
        or after max_new_tokens. temperature 0 = greedy; top_k 0 and top_p 1 = off.
        Returns the new tokens of each prompt.
        """
        cfg, device = self.config, self.tok_emb.weight.device
        B, P = len(prompts), max(len(p) for p in prompts)
        if P + max_new_tokens > cfg.block_size:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds block_size {cfg.block_size}")
        idx = torch.zeros(B, P, dtype=torch.long, device=device)
        real = torch.zeros(B, P + max_new_tokens, dtype=torch.bool, device=device)  # non-pad keys
        for b, p in enumerate(prompts):
            if not p:
                raise ValueError("every prompt needs at least one token")
            idx[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
        real[:, P:] = True
        for b, p in enumerate(prompts):
            real[b, P - len(p):P] = True
        dtype = self.tok_emb.weight.dtype
        caches = [KVCache(B, cfg.n_kv_head, P + max_new_tokens, cfg.head_dim, device, dtype)
                  for _ in range(cfg.n_layer)]
        out = [[] for _ in range(B)]
        done = torch.zeros(B, dtype=torch.bool, device=device)
        pos, x = 0, idx
        for _ in range(max_new_tokens):
            T = x.shape[1]
            # query t may see key s if s <= t (causal) and s is not padding; a padding query
            # sees itself, so its (unused) row never becomes an all-masked NaN: (B, 1, T, pos+T)
            q_pos = torch.arange(pos, pos + T, device=device)[:, None]
            k_pos = torch.arange(pos + T, device=device)[None, :]
            mask = (k_pos <= q_pos)[None, None] & (real[:, None, None, :pos + T] | (k_pos == q_pos))
            logits, _ = self(x, caches=caches, mask=mask, start=pos)
            pos += T
            nxt = sample_next(logits[:, -1].float(), temperature, top_k, top_p, generator)  # (B,)
            for b in range(B):
                if not done[b]:
                    out[b].append(int(nxt[b]))
                    done[b] = int(nxt[b]) in stop_tokens
            if done.all():
                break
            x = nxt[:, None]
        return out


def sample_next(logits, temperature=1.0, top_k=0, top_p=1.0, generator=None):
    """One token per row of logits (B, V): greedy, or sampled after temperature, top-k and
    nucleus (top-p: the smallest set of tokens whose probabilities sum to >= top_p)."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p         # mass before this token >= p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- measures

def flops_per_token(cfg, n_params):
    """Training FLOPs per token: 6N for the weight matmuls (N includes the LM head: with tied
    embeddings it is the embedding matrix, counted once) plus attention's scores and
    weighted sum, 12 * n_layer * n_embd * T (forward 4 L C T, backward twice that)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def bits_per_byte(logits, targets, byte_lengths):
    """(summed next-token loss in nats, UTF-8 bytes of the targets), special tokens excluded.

    bits per byte = nats / (ln 2 * bytes): unlike loss per token it does not depend on the
    tokenizer, so models with different vocabularies can be compared. Sum both over batches,
    then divide once: `nats / (math.log(2) * n_bytes)`.
    """
    nats = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    n_bytes = byte_lengths.to(targets.device)[targets.reshape(-1)]
    keep = n_bytes > 0
    return nats[keep].sum().item(), n_bytes[keep].sum().item()


# ----------------------------------------------------------------------------- checkpoints

def save_checkpoint(out_dir, model, tokenizer_path):
    """Write model.pt (plain state_dict + config dict) and a copy of the tokenizer, each
    atomically; the stage then writes meta.json (common.write_meta). `model` must be the
    unwrapped module (not DDP, not compiled)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_open(out_dir / "model.pt", "wb") as f:
        torch.save({"model": state, "config": asdict(model.config)}, f)
    if Path(tokenizer_path).resolve() != (out_dir / "tokenizer.json").resolve():
        with atomic_open(out_dir / "tokenizer.json", "wb") as f:
            f.write(Path(tokenizer_path).read_bytes())


def load_checkpoint(ckpt_dir, device="cpu"):
    """(model, tokenizer, meta) of any stage's checkpoint directory, checked for consistency."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / "model.pt"
    if not path.exists():
        raise StageError(f"no checkpoint at {path}; run train.py (or the stage that makes it) first")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        cfg = GPTConfig(**{f.name: ckpt["config"][f.name] for f in fields(GPTConfig)})
    except Exception as e:        # a truncated or foreign file: torch raises many kinds
        raise StageError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); "
                         f"it may be truncated, train again") from None
    tokenizer = Tokenizer.load(ckpt_dir / "tokenizer.json")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise StageError(f"{ckpt_dir}: tokenizer has {tokenizer.vocab_size} ids, the model "
                         f"{cfg.vocab_size}; they do not belong together")
    meta = json.loads((ckpt_dir / "meta.json").read_text()) if (ckpt_dir / "meta.json").exists() else {}
    expected = meta.get("tokenizer", {}).get("sha256")
    if expected and tokenizer.sha256() != expected:
        raise StageError(f"{ckpt_dir}/tokenizer.json is not the tokenizer this model was trained with "
                         f"(sha256 differs from meta.json); they do not belong together")
    model = GPT(cfg).to(device)
    model.load_state_dict(ckpt["model"])
    return model, tokenizer, meta
