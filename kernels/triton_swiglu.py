"""Fused SwiGLU gate, forward and backward: out = silu(a) * b = a * sigmoid(a) * b.

Unfused, torch writes silu(a) to memory and reads it back for the product, and autograd keeps
it for the backward pass. Here one pass reads a and b and writes out; the backward pass
recomputes sigmoid(a) from a instead of storing anything:

    d out / d a = b * sigmoid(a) * (1 + a * (1 - sigmoid(a))),    d out / d b = silu(a)
"""

import torch
import triton
import triton.language as tl

ELEMENTS_PER_PROGRAM = 1024          # the kernels' BLOCK: each program's slice of the flat tensors


@triton.jit
def _swiglu_fwd(A, B, OUT, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    out = a * tl.sigmoid(a) * b
    tl.store(OUT + offs, out, mask=mask)


@triton.jit
def _swiglu_bwd(A, B, DOUT, DA, DB, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    a = tl.load(A + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(DOUT + offs, mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(a)
    silu = a * sig
    tl.store(DA + offs, dout * b * sig * (1 + a * (1 - sig)), mask=mask)
    tl.store(DB + offs, dout * silu, mask=mask)


class SwiGLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b):
        a, b = a.contiguous(), b.contiguous()
        out = torch.empty_like(a)
        n = a.numel()
        grid = (triton.cdiv(n, ELEMENTS_PER_PROGRAM),)
        _swiglu_fwd[grid](a, b, out, n, BLOCK=ELEMENTS_PER_PROGRAM)
        ctx.save_for_backward(a, b)
        return out

    @staticmethod
    def backward(ctx, dout):
        a, b = ctx.saved_tensors
        da, db = torch.empty_like(a), torch.empty_like(b)
        n = a.numel()
        grid = (triton.cdiv(n, ELEMENTS_PER_PROGRAM),)
        _swiglu_bwd[grid](a, b, dout.contiguous(), da, db, n, BLOCK=ELEMENTS_PER_PROGRAM)
        return da, db


def swiglu(a, b):
    return SwiGLUFunction.apply(a, b)
