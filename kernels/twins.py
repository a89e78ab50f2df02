"""The plain PyTorch twin of every kernel: the same meaning and signature, the reference the
Triton versions are tested against, and what the model runs where Triton cannot (CPU, MPS)."""

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps):
    """x / sqrt(mean(x^2) + eps) * weight over the last dimension, computed in fp32."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return xf.type_as(x) * weight


def swiglu(a, b):
    """silu(a) * b, the gate of a SwiGLU MLP."""
    return F.silu(a) * b


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean next-token cross-entropy over the rows whose target is not ignore_index.
    logits (N, V), targets (N,). With no such row the mean is 0, not 0/0 (a batch that
    supervises nothing, in SFT, must not turn the step into NaN), as in the Triton kernel."""
    total = F.cross_entropy(logits.float(), targets, ignore_index=ignore_index, reduction="sum")
    return total / (targets != ignore_index).sum().clamp(min=1)


def linear_cross_entropy(h, weight, targets, ignore_index=-100):
    """cross_entropy(h @ weight^T, targets): the LM head and the loss. h (N, C), weight (V, C)."""
    return cross_entropy(F.linear(h, weight), targets, ignore_index)


def attention(q, k, v, causal=True, mask=None):
    """Softmax attention on (B, n_head, T, head_dim); k, v may have fewer (grouped) heads.

    mask: None, or a boolean mask broadcastable to (B, n_head, Tq, Tk), True where a query
    may attend; given, it replaces `causal` (which is then ignored), so it must hold the
    causality itself. That is what generation needs: with a KV cache Tq < Tk, and padded
    prompts hide their padding, which `is_causal` (a top-left-aligned triangle) cannot say."""
    if k.shape[1] != q.shape[1]:                   # each kv head serves a group of query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
