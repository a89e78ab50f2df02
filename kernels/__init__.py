"""Triton kernels for the GPU hot path (kernels/triton_*.py), each with a plain PyTorch twin
of the same meaning and signature (kernels/twins.py).

    attention(q, k, v, causal, mask)          FlashAttention-2 style, forward and backward;
                                              a mask (generation) runs the twin
    rms_norm(x, weight, eps)                  fused RMSNorm, forward and backward
    swiglu(a, b)                              fused silu(a) * b, forward and backward
    cross_entropy(logits, targets, ignore)    chunked over the vocabulary, no fp32 copy
    linear_cross_entropy(h, W, targets, ignore)   LM head + loss fused: the logits never stored

kernels/triton_matmul.py (a tiled matmul with grouped ordering) is a teaching and benchmark
kernel: the model multiplies with cuBLAS, so tests and bench/ call it directly. kernels/README.md
explains each kernel and records its measured figures.

The model calls these names; which implementation runs is chosen at run time, never saved in
a checkpoint: `set_backend("auto")` (the default) runs Triton on CUDA tensors and the twin
elsewhere; "torch" or "triton" force one (train.py --kernels). Tests run the Triton versions
on the CPU with TRITON_INTERPRET=1 set before this package is imported.
"""

import functools
import os
import types

import torch

from kernels import twins

BACKENDS = ("auto", "torch", "triton")
_backend = "auto"


def set_backend(name):
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"kernel backend {name!r}: choose one of {BACKENDS}")
    if name == "triton":
        _triton()                                   # fail now, not at the first forward pass
    _backend = name


def _use_triton(x):
    return _backend == "triton" or (_backend == "auto" and x.is_cuda)


@functools.cache
def _triton():
    """The Triton kernel modules by name, imported on first use (Triton is optional on a CPU)
    and remembered: this sits on the hot path of every kernel call."""
    if not (os.environ.get("TRITON_INTERPRET") == "1" or _cuda_available()):
        raise RuntimeError("Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 to run them "
                           "(slowly) on the CPU; use --kernels torch")
    from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy, triton_rmsnorm,
                         triton_swiglu)
    return types.SimpleNamespace(rms_norm=triton_rmsnorm, swiglu=triton_swiglu, cross_entropy=triton_cross_entropy,
                                 linear_cross_entropy=triton_linear_cross_entropy, attention=triton_attention)


def _cuda_available():
    return torch.cuda.is_available()


def rms_norm(x, weight, eps):
    if _use_triton(x):
        return _triton().rms_norm.rms_norm(x, weight, eps)
    return twins.rms_norm(x, weight, eps)


def swiglu(a, b):
    if _use_triton(a):
        return _triton().swiglu.swiglu(a, b)
    return twins.swiglu(a, b)


def cross_entropy(logits, targets, ignore_index=-100):
    if _use_triton(logits):
        return _triton().cross_entropy.cross_entropy(logits, targets, ignore_index)
    return twins.cross_entropy(logits, targets, ignore_index)


def linear_cross_entropy(h, weight, targets, ignore_index=-100):
    if _use_triton(h):
        return _triton().linear_cross_entropy.linear_cross_entropy(h, weight, targets, ignore_index)
    return twins.linear_cross_entropy(h, weight, targets, ignore_index)


def attention(q, k, v, causal=True, mask=None):
    """Softmax attention on (B, n_head, T, head_dim), k and v with n_head or fewer (grouped)
    heads. mask: None, or a boolean mask broadcastable to (B, n_head, Tq, Tk), True where a
    query may attend (generation: padding and the KV cache); it replaces `causal`, so it must
    hold the causality itself. Masked attention always runs the twin (the Triton kernel
    knows only the causal mask), and so does a head size the kernel was not built for."""
    if mask is None and _use_triton(q) and q.shape[-1] in _triton().attention.HEAD_DIMS:
        return _triton().attention.attention(q, k, v, causal)
    return twins.attention(q, k, v, causal, mask)
