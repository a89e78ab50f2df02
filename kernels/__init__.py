"""Triton kernels for the GPU hot path (kernels/triton_*.py), each with a plain PyTorch twin
of the same meaning and signature (kernels/twins.py).

    attention(q, k, v, causal)                FlashAttention-2 style, forward and backward
    rms_norm(x, weight, eps)                  fused RMSNorm, forward and backward
    swiglu(a, b)                              fused silu(a) * b, forward and backward
    cross_entropy(logits, targets, ignore)    chunked over the vocabulary, no fp32 copy
    linear_cross_entropy(h, W, targets, ignore)   LM head + loss fused: the logits never stored
    matmul(a, b)                              tiled, grouped ordering (teaching, benchmarks)

kernels/README.md explains each one and records its measured figures.

The model calls these names; which implementation runs is chosen at run time, never saved in
a checkpoint: `set_backend("auto")` (the default) runs Triton on CUDA tensors and the twin
elsewhere; "torch" or "triton" force one (train.py --kernels). Tests run the Triton versions
on the CPU with TRITON_INTERPRET=1 set before this package is imported.
"""

import functools
import os

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
    """The Triton implementations, imported on first use (Triton is optional on a CPU) and
    remembered: this sits on the hot path of every kernel call."""
    if not (os.environ.get("TRITON_INTERPRET") == "1" or _cuda_available()):
        raise RuntimeError("Triton kernels need a CUDA GPU, or TRITON_INTERPRET=1 to run them "
                           "(slowly) on the CPU; use --kernels torch")
    from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy, triton_matmul,
                         triton_rmsnorm, triton_swiglu)
    return (triton_rmsnorm, triton_swiglu, triton_cross_entropy, triton_attention, triton_matmul,
            triton_linear_cross_entropy)


def dot_precision(x):
    """How the kernels' tl.dot multiplies fp32 inputs, following torch's setting for fp32
    matrix products (torch.set_float32_matmul_precision). Under torch's default, "highest",
    three TF32 products per multiply ("tf32x3": the operands split into a high and a low
    TF32 part) recover fp32 accuracy (~1e-6) on the tensor cores; "high" and "medium" allow
    one TF32 product (a 10-bit mantissa, ~1e-3). Triton's own default is one TF32 product,
    which would make an fp32 kernel differ from its twin by ~1e-3 on a GPU (the interpreter
    multiplies exactly and cannot show it); exact "ieee" products would leave the tensor
    cores idle and take minutes to compile. bf16 and fp16 inputs are unaffected."""
    import torch
    if x.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"


def _cuda_available():
    import torch
    return torch.cuda.is_available()


def rms_norm(x, weight, eps):
    if _use_triton(x):
        return _triton()[0].rms_norm(x, weight, eps)
    return twins.rms_norm(x, weight, eps)


def swiglu(a, b):
    if _use_triton(a):
        return _triton()[1].swiglu(a, b)
    return twins.swiglu(a, b)


def cross_entropy(logits, targets, ignore_index=-100):
    if _use_triton(logits):
        return _triton()[2].cross_entropy(logits, targets, ignore_index)
    return twins.cross_entropy(logits, targets, ignore_index)


def linear_cross_entropy(h, weight, targets, ignore_index=-100):
    if _use_triton(h):
        return _triton()[5].linear_cross_entropy(h, weight, targets, ignore_index)
    return twins.linear_cross_entropy(h, weight, targets, ignore_index)


def attention(q, k, v, causal=True):
    if _use_triton(q) and q.shape[-1] in (32, 64, 128):
        return _triton()[3].attention(q, k, v, causal)
    return twins.attention(q, k, v, causal)


def matmul(a, b):
    if _use_triton(a):
        return _triton()[4].matmul(a, b)
    return twins.matmul(a, b)
