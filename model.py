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

One entry point per job:
    hidden(idx)             the final hidden states (B, T, C): the trunk, for scalar heads
    forward(idx)            the logits (B, T, V): scoring, evaluation
    forward(idx, targets)   the mean loss, through the fused LM head + loss (on a GPU the
                            (B*T, V) logits are never stored): what a training step calls, so
                            that DDP, FSDP and torch.compile, which wrap `forward`, see it
    scores(idx)             a scalar per position from the scalar head (reward, value models)
    generate(prompts, ...)  sampling with a KV cache; stream(...) yields the tokens as they come
Targets of IGNORE_INDEX (-100) carry no loss (SFT masks prompts that way); next_token_loss
gives the same loss from logits where both are wanted. `save_checkpoint` / `load_checkpoint`
are the one checkpoint format of every stage (model.pt, tokenizer.json, meta.json with a kind).

References: Vaswani et al. 2017; Radford et al. 2019 (GPT-2); Touvron et al. 2023 (LLaMA's
RMSNorm + RoPE + SwiGLU recipe); nanoGPT.
"""

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import kernels
from common import StageError, atomic_open, json_field, read_json, require, sha256_file, write_meta
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

    def forward(self, x, cos, sin, cache=None, mask=None):
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)     # (B, H, T, D)
        k = self.wk(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # (B, Hkv, T, D)
        v = self.wv(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:                            # generation: append, attend to all
            k, v = cache.update(k, v)
        # training and scoring: causal (fused on CUDA); generation: its padding + cache mask
        y = kernels.attention(q, k, v, causal=True, mask=mask)                    # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))                        # (B, T, C)


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.w1 = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.w3 = nn.Linear(cfg.n_embd, cfg.mlp_hidden, bias=False)
        self.w2 = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

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


class ScalarHead(nn.Module):
    """A score per position from the final hidden state h (B, T, C), for a reward model or a
    value function: gain * (w . h + b) + shift. gain and shift are not learned by gradient:
    the reward stage sets them so that its scores have mean 0 and standard deviation 1 on its
    data (InstructGPT normalises its reward model the same way); they are 1 and 0 until then.
    w starts at N(0, 1/sqrt(C + 1)), b at 0, as in OpenAI's lm-human-preferences."""

    def __init__(self, n_embd):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_embd) / math.sqrt(n_embd + 1))
        self.bias = nn.Parameter(torch.zeros(()))
        self.register_buffer("gain", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))

    def forward(self, h):
        return self.gain * (h.float() @ self.weight.float() + self.bias) + self.shift      # (B, T)


class GPT(nn.Module):
    def __init__(self, cfg, scalar_head=False):
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
        self._init_weights()
        # after the trunk's initialisation, so a base model draws the same numbers with or without it
        self.head = ScalarHead(cfg.n_embd) if scalar_head else None

    def _init_weights(self):
        """N(0, 0.02) for every linear and embedding weight, in module order (the tied LM head
        last: its draw is the embedding's), except the two projections that write into the
        residual stream, attention's wo and the MLP's w2: 0.02 / sqrt(2 n_layer)."""
        residual = {m for block in self.blocks for m in (block.attn.wo, block.mlp.w2)}
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                std = 0.02 / math.sqrt(2 * self.config.n_layer) if module in residual else 0.02
                nn.init.normal_(module.weight, mean=0.0, std=std)

    def num_params(self):
        """Parameters, the tied embedding/LM head counted once."""
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx, caches=None, mask=None, start=0):
        """idx (B, T) -> the final hidden states (B, T, C), after the last norm.

        caches, mask and start are generation's: one KV cache per layer, the attention mask
        (padding), and the position of idx's first token (rotary angles start there)."""
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds block_size {self.config.block_size}")
        cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]
        x = self.tok_emb(idx)                                                     # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, caches[i] if caches else None, mask)
        return self.norm(x)

    def forward(self, idx, targets=None, supervised_only=False):
        """idx (B, T) -> logits (B, T, V); with targets (B, T), the mean cross-entropy over the
        positions whose target is not IGNORE_INDEX, by the fused LM head + loss instead.
        supervised_only: run the LM head on those positions only, the same loss for less work
        where most targets are ignored (SFT supervises a third of them; the selection costs a
        device sync, which pretraining, where every target counts, does without)."""
        x = self.hidden(idx)
        if targets is None:
            return self.lm_head(x)                                                # (B, T, V)
        B, T, C = x.shape
        x, targets = x.view(B * T, C), targets.reshape(-1)
        if supervised_only:
            keep = targets != IGNORE_INDEX
            x, targets = x[keep], targets[keep]
        return kernels.linear_cross_entropy(x, self.lm_head.weight, targets, IGNORE_INDEX)

    def scores(self, idx):
        """idx (B, T) -> the scalar head's score at every position (B, T), in fp32."""
        if self.head is None:
            raise ValueError("this model has no scalar head: build it with GPT(cfg, scalar_head=True)")
        return self.head(self.hidden(idx))

    # ------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
                 stop_tokens=(), generator=None):
        """Sample continuations of a batch of prompts (lists of ids, any lengths): the new
        tokens of each, up to and including its first stop token, or max_new_tokens of them.
        temperature 0 = greedy; top_k 0 and top_p 1 = off. (stream() yields them as they come.)"""
        out = [[] for _ in prompts]
        done = [False] * len(prompts)
        for nxt in self.stream(prompts, max_new_tokens, temperature, top_k, top_p, stop_tokens, generator):
            for b, t in enumerate(nxt):
                if not done[b]:
                    out[b].append(t)
                    done[b] = t in stop_tokens
        return out

    @torch.no_grad()
    def stream(self, prompts, max_new_tokens, temperature=1.0, top_k=0, top_p=1.0,
               stop_tokens=(), generator=None):
        """Yield the next token of every prompt, a list of B ids per step, until every
        sequence has produced a stop token or max_new_tokens steps have passed (a sequence
        that has stopped keeps yielding tokens, which the caller drops).

        Prompts are left-padded to a common length; padded keys are masked out, and since
        rotary embeddings only see distances, the padding shifts nothing. Each step feeds one
        token per sequence and attends to the KV cache.
        """
        cfg, device = self.config, self.tok_emb.weight.device
        B, P = len(prompts), max(len(p) for p in prompts)
        if P + max_new_tokens > cfg.block_size:
            raise ValueError(f"prompt ({P}) + max_new_tokens ({max_new_tokens}) exceeds block_size {cfg.block_size}")
        idx = torch.zeros(B, P, dtype=torch.long, device=device)
        real = torch.zeros(B, P + max_new_tokens, dtype=torch.bool, device=device)  # non-pad keys
        real[:, P:] = True
        for b, p in enumerate(prompts):
            if not p:
                raise ValueError("every prompt needs at least one token")
            idx[b, P - len(p):] = torch.tensor(p, dtype=torch.long)
            real[b, P - len(p):P] = True
        dtype = self.tok_emb.weight.dtype
        caches = [KVCache(B, cfg.n_kv_head, P + max_new_tokens, cfg.head_dim, device, dtype)
                  for _ in range(cfg.n_layer)]
        done = [False] * B
        pos, x = 0, idx
        for _ in range(max_new_tokens):
            T = x.shape[1]
            # query t may see key s if s <= t (causal) and s is not padding; a padding query
            # sees itself, so its (unused) row never becomes an all-masked NaN: (B, 1, T, pos+T)
            q_pos = torch.arange(pos, pos + T, device=device)[:, None]
            k_pos = torch.arange(pos + T, device=device)[None, :]
            mask = (k_pos <= q_pos)[None, None] & (real[:, None, None, :pos + T] | (k_pos == q_pos))
            logits = self.lm_head(self.hidden(x, caches, mask, start=pos))        # (B, T, V)
            pos += T
            nxt = sample_next(logits[:, -1].float(), temperature, top_k, top_p, generator)  # (B,)
            tokens = nxt.tolist()
            yield tokens
            done = [d or t in stop_tokens for d, t in zip(done, tokens)]
            if all(done):
                return
            x = nxt[:, None]


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
    # inverse transform sampling: the first token whose cumulative probability passes u ~ U(0, c),
    # c the row's total (1 up to rounding); a token of probability 0 never passes (side="right").
    # The same distribution as torch.multinomial, about 9x faster on a CPU at vocabulary 8k.
    cdf = logits.softmax(-1).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp(max=cdf.shape[-1] - 1)


# ----------------------------------------------------------------------------- measures

FLOPS_FORMULA = "6 N + 12 n_layer n_embd block_size (N: parameters, the tied embedding counted once)"


def flops_per_token(cfg, n_params):
    """Training FLOPs per token: 6N for the weight matmuls (N includes the LM head: with tied
    embeddings it is the embedding matrix, counted once) plus attention's scores and
    weighted sum, 12 * n_layer * n_embd * T (forward 4 L C T, backward twice that)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def next_token_loss(logits, targets):
    """Mean cross-entropy of logits (B, T, V) against targets (B, T) over the positions whose
    target is not IGNORE_INDEX: forward(idx, targets)'s loss, from logits already computed."""
    return kernels.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), IGNORE_INDEX)


def bits_per_byte(logits, targets, byte_lengths):
    """(summed next-token loss in nats, UTF-8 bytes of the targets), special tokens and
    targets of IGNORE_INDEX (SFT's prompts) excluded.

    bits per byte = nats / (ln 2 * bytes): unlike loss per token it does not depend on the
    tokenizer, so models with different vocabularies can be compared. Sum both over batches,
    then divide once: `nats / (math.log(2) * n_bytes)`.
    """
    targets = targets.reshape(-1)
    nats = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets, reduction="none",
                           ignore_index=IGNORE_INDEX)
    n_bytes = byte_lengths.to(targets.device)[targets.clamp(min=0)] * (targets != IGNORE_INDEX)
    keep = n_bytes > 0
    return nats[keep].sum().item(), n_bytes[keep].sum().item()


# ----------------------------------------------------------------------------- checkpoints

FORMAT, VERSION = "checkpoint", 1
# What a checkpoint directory holds (meta.json's "kind"), and the stage that writes it.
KINDS = {"base": "train.py", "chat": "sft.py", "reward": "reward.py", "value": "ppo.py",
         "student": "the distillation stage", "quantized": "quantize.py"}
HEAD_KINDS = ("reward", "value")          # kinds whose model carries a scalar head


def save_checkpoint(out_dir, state, config, tokenizer, *, kind, script, args, metrics, inputs,
                    accounting=None, parent=None):
    """Write a checkpoint directory, each file atomically: model.pt (the plain state_dict,
    scalar head included, and the config as a dict), tokenizer.json, and meta.json last (its
    presence says the directory is complete).

    `state` is the unwrapped model's state_dict (never a DDP or compiled wrapper's; under FSDP
    the gathered one training.save_train_state returns). `parent`: the checkpoint directory
    this one was fine-tuned from, recorded by the hash of its model.pt."""
    if kind not in KINDS:
        raise ValueError(f"kind {kind!r}: choose one of {sorted(KINDS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = asdict(config)
    with atomic_open(out_dir / "model.pt", "wb") as f:
        torch.save({"model": {k: v.detach().cpu() for k, v in state.items()}, "config": config}, f)
    tokenizer.save(out_dir / "tokenizer.json")
    extra = {"model_sha256": sha256_file(out_dir / "model.pt")}      # meta.json and model.pt belong together
    if parent is not None:
        extra["parent"] = {"path": str(parent), "sha256": sha256_file(Path(parent) / "model.pt")}
    write_meta(out_dir, FORMAT, VERSION, script, args, metrics, inputs=inputs, config=config, kind=kind,
               tokenizer={"sha256": tokenizer.sha256(), "vocab_size": tokenizer.vocab_size,
                          "special_tokens": tokenizer.special_tokens},
               accounting=accounting, **extra)


def read_meta(ckpt_dir, kind=None):
    """meta.json of a checkpoint directory, checked: the format and version this code reads,
    and (if `kind` is given: one kind or a tuple of them) a kind it accepts. Every refusal
    names the stage to run."""
    ckpt_dir = Path(ckpt_dir)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
    producer = " or ".join(dict.fromkeys(KINDS[k] for k in kinds)) if kinds else "train.py (or the stage that makes it)"
    path = ckpt_dir / "meta.json"
    meta = read_json(path, producer)
    if meta.get("format") != FORMAT:
        raise StageError(f"{ckpt_dir} is not a checkpoint directory (meta.json's format is "
                         f"{meta.get('format')!r}); give a directory {producer} wrote")
    if meta.get("version") != VERSION:
        raise StageError(f"{ckpt_dir} is checkpoint version {meta.get('version')}, this code reads "
                         f"version {VERSION}; run {producer} again")
    meta.setdefault("kind", "base")        # version 1 wrote no kind before there was more than one
    if not isinstance(meta["kind"], str) or meta["kind"] not in KINDS:
        raise StageError(f"{path} is damaged (kind {meta['kind']!r} is not one of {', '.join(KINDS)}); "
                         f"run {producer} again")
    # the fields load_checkpoint reads, if present (older directories lack them)
    json_field(meta, "tokenizer", dict, path, producer, default=None)
    json_field(meta, "model_sha256", str, path, producer, default=None)
    if kinds and meta["kind"] not in kinds:
        raise StageError(f"{ckpt_dir} holds a {meta['kind']} model, this stage needs {' or '.join(kinds)}: "
                         f"give the directory {producer} wrote")
    return meta


def load_checkpoint(ckpt_dir, kind=None, device="cpu"):
    """(model, tokenizer, meta) of any stage's checkpoint directory, checked for consistency:
    meta.json (format, version, kind: see read_meta), model.pt, and a tokenizer that is the
    one the model was trained with. A reward or value checkpoint comes back with its scalar
    head (model.scores)."""
    ckpt_dir = Path(ckpt_dir)
    kinds = (kind,) if isinstance(kind, str) else tuple(kind or ())
    producer = " or ".join(dict.fromkeys(KINDS[k] for k in kinds)) if kinds else "train.py (or the stage that makes it)"
    path = require(ckpt_dir / "model.pt", producer, what="checkpoint")
    meta = read_meta(ckpt_dir, kind)
    if meta["kind"] == "quantized":
        raise StageError(f"{ckpt_dir} holds a quantized model, which this loader cannot read yet")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
        cfg = GPTConfig(**{f.name: ckpt["config"][f.name] for f in fields(GPTConfig)})
        state = ckpt["model"]
    except Exception as e:        # a truncated or foreign file: torch raises many kinds
        raise StageError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e}); "
                         f"it may be truncated, train again") from None
    if meta.get("model_sha256") and sha256_file(path) != meta["model_sha256"]:
        raise StageError(f"{path} is not the model {ckpt_dir}/meta.json describes (a run killed between "
                         f"writing the two?); resume the stage that wrote it ({KINDS[meta['kind']]} --resume)")
    has_head = "head.weight" in state
    if meta["kind"] in HEAD_KINDS and not has_head:
        raise StageError(f"{path} is a {meta['kind']} checkpoint without its scalar head (head.weight); "
                         f"run {KINDS[meta['kind']]} again")
    tokenizer = Tokenizer.load(ckpt_dir / "tokenizer.json")
    if tokenizer.vocab_size != cfg.vocab_size:
        raise StageError(f"{ckpt_dir}: tokenizer has {tokenizer.vocab_size} ids, the model "
                         f"{cfg.vocab_size}; they do not belong together")
    expected = meta.get("tokenizer", {}).get("sha256")
    if expected and tokenizer.sha256() != expected:
        raise StageError(f"{ckpt_dir}/tokenizer.json is not the tokenizer this model was trained with "
                         f"(sha256 differs from meta.json); they do not belong together")
    model = GPT(cfg, scalar_head=has_head).to(device)
    model.load_state_dict(state)
    return model, tokenizer, meta
