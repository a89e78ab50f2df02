"""The LM head and the cross-entropy in one kernel: the logits are never written to memory.

    logits = h @ W^T                              (N, C) @ (C, V): computed a tile at a time
    loss_i = logsumexp(logits_i) - logits_i[target_i],   mean over rows not ignored

Even chunked (triton_cross_entropy.py), the loss needs the (N, V) logits that the LM head
wrote: at V = 50,304 and 16 x 1,024 rows, 1.6 GB in bf16, written once, read twice, and kept
for the backward pass. Here each program takes BLOCK_M rows of h and walks the vocabulary in
tiles of BLOCK_V (both autotuned on a GPU): it computes the (BLOCK_M, BLOCK_V) tile of logits
on chip (a loop of tl.dot over the hidden size), folds it into a running log-sum-exp (as in
the chunked loss) and picks out the target's logit, then drops it. Only h, W and one float per row (the
log-sum-exp) are ever in memory. (Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary
Language Models", do the same.)

The backward pass recomputes each tile, turns it into the gradient of the loss with respect
to the logits,

    G_ij = (softmax_ij - [j == target_i]) / n_valid      (zero on ignored rows)

and multiplies it straight away into both gradients, still on chip:

    dh[rows] += G_tile @ W[tile]          dW[tile] += G_tile^T @ h[rows]

Tiles of different programs add into the same rows of dh and dW, so the sums use atomic adds
into fp32 buffers: on a GPU the order of the additions, and so the last bits of the result,
vary from run to run (the same trade as torch's index_add on CUDA).
"""

import contextlib
import os

import torch
import triton
import triton.language as tl

from kernels.precision import dot_precision
from kernels.triton_cross_entropy import logits_grad, row_losses

# Tile sizes, autotuned on a GPU by N, V and C: larger tiles mean fewer atomic additions in
# the backward pass (each element of dh receives V / BLOCK_V of them, each of dW N / BLOCK_M:
# at 16,384 x 768 @ 768 x 50,304 and 128 x 128 tiles, 10 billion in all; 128 x 256 halves
# dh's), smaller ones fewer registers. None spills on sm_90 (bench/compile.py). tl.dot needs
# every side >= 16; the interpreter runs NumPy and cannot benchmark, so it gets one small
# configuration.
CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_V": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_V": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_V": 64, "BLOCK_K": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_V": 256, "BLOCK_K": 32}, num_warps=8, num_stages=2),
]
if os.environ.get("TRITON_INTERPRET") == "1":               # no benchmarking: one configuration
    CONFIGS = [triton.Config({"BLOCK_M": 16, "BLOCK_V": 32, "BLOCK_K": 16})]


@triton.jit
def _logits_tile(H, W, rows, cols, row_mask, col_mask, C, stride_h, stride_w, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_M, BLOCK_V) logits h[rows] @ W[cols]^T in fp32, over the hidden size in BLOCK_K steps."""
    acc = tl.zeros((BLOCK_M, BLOCK_V), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < C
        h = tl.load(H + rows[:, None] * stride_h + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(W + cols[:, None] * stride_w + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.dot(h, tl.trans(w), input_precision=PRECISION)
    return acc


@triton.autotune(configs=CONFIGS, key=["N", "V", "C"])
@triton.jit
def _lce_fwd(H, W, TARGETS, LOSS, LSE, N, V, C, stride_h, stride_w, ignore_index, PRECISION: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < N
    target = tl.load(TARGETS + rows, mask=row_mask, other=ignore_index)
    m = tl.full((BLOCK_M,), -float("inf"), dtype=tl.float32)     # running max
    s = tl.zeros((BLOCK_M,), dtype=tl.float32)                   # running sum of exp(x - m)
    target_logit = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_mask = cols < V
        x = _logits_tile(H, W, rows, cols, row_mask, col_mask, C, stride_h, stride_w, PRECISION, BLOCK_M, BLOCK_V,
                         BLOCK_K)
        x = tl.where(col_mask[None, :], x, -float("inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), axis=1)
        m = m_new
        target_logit += tl.sum(tl.where(cols[None, :] == target[:, None], x, 0.0), axis=1)
    lse = m + tl.log(s)
    tl.store(LSE + rows, lse, mask=row_mask)
    tl.store(LOSS + rows, tl.where(target != ignore_index, lse - target_logit, 0.0), mask=row_mask)


# reset_to_zero: autotuning runs the kernel several times, and its atomic adds must start
# from zero each time
@triton.autotune(configs=CONFIGS, key=["N", "V", "C"], reset_to_zero=["DH", "DW"])
@triton.jit
def _lce_bwd(H, W, TARGETS, LSE, DH, DW, SCALE, N, V, C, stride_h, stride_w, ignore_index, PRECISION: tl.constexpr,
             BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
    row_mask, col_mask = rows < N, cols < V
    target = tl.load(TARGETS + rows, mask=row_mask, other=ignore_index)
    lse = tl.load(LSE + rows, mask=row_mask, other=0.0)
    scale = tl.load(SCALE)                                        # d loss / n_valid, read on the device
    x = _logits_tile(H, W, rows, cols, row_mask, col_mask, C, stride_h, stride_w, PRECISION, BLOCK_M, BLOCK_V,
                         BLOCK_K)
    g = tl.exp(x - lse[:, None]) - tl.where(cols[None, :] == target[:, None], 1.0, 0.0)
    keep = (target != ignore_index) & row_mask
    g = tl.where(keep[:, None] & col_mask[None, :], g * scale, 0.0)   # (BLOCK_M, BLOCK_V) = d loss / d logits
    g = g.to(H.dtype.element_ty)
    for k0 in range(0, C, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < C
        h = tl.load(H + rows[:, None] * stride_h + ks[None, :], mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(W + cols[:, None] * stride_w + ks[None, :], mask=col_mask[:, None] & k_mask[None, :], other=0.0)
        tl.atomic_add(DH + rows[:, None] * C + ks[None, :], tl.dot(g, w, input_precision=PRECISION),
                      mask=row_mask[:, None] & k_mask[None, :])
        tl.atomic_add(DW + cols[:, None] * C + ks[None, :], tl.dot(tl.trans(g), h, input_precision=PRECISION),
                      mask=col_mask[:, None] & k_mask[None, :])


# How the backward pass gets dh and dW, undecided until a GPU run says which is faster: this
# global is the one place the choice lives (switch it with `backward_pass`; bench/gpu.py
# checks and times both, the tests check both). Once a GPU run has decided, keep the winner
# and delete the other. "fused": as above, the logits never exist, at the price of atomic
# adds. "chunked" (as Liger-Kernel does it): a few thousand rows at a time, that chunk's
# logits by cuBLAS, turned in place into d loss / d logits by the chunked cross-entropy's
# kernels, then dh and dW by cuBLAS: no atomics, one chunk of logits in memory (CHUNK_LOGITS
# of them, 256 MB in bf16).
BACKWARDS = ("fused", "chunked")
BACKWARD = "fused"
CHUNK_LOGITS = 1 << 27


@contextlib.contextmanager
def backward_pass(mode):
    """Within the block, the backward pass is `mode` ("fused" or "chunked"); then as before."""
    global BACKWARD
    if mode not in BACKWARDS:
        raise ValueError(f"backward pass {mode!r}: choose one of {BACKWARDS}")
    before, BACKWARD = BACKWARD, mode
    try:
        yield
    finally:
        BACKWARD = before


def _chunked_backward(h, weight, targets, scale, ignore_index):
    dh = torch.empty_like(h)
    dw = torch.zeros(weight.shape, device=h.device, dtype=torch.float32)
    rows = max(1, CHUNK_LOGITS // weight.shape[0])
    for start in range(0, h.shape[0], rows):
        hc, tc = h[start:start + rows], targets[start:start + rows]
        g = hc @ weight.t()                                                       # (rows, V) logits
        # the log-sum-exp of these rounded logits, not the forward's: the softmax must sum to 1
        _, lse = row_losses(g, tc, ignore_index)
        logits_grad(g, tc, lse, scale, ignore_index, out=g)                       # in place
        dh[start:start + rows] = g @ weight                                       # (rows, C)
        dw += (g.t() @ hc).float()                                                # (V, C)
    return dh, dw.to(weight.dtype)


class LinearCrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.bfloat16)
    def forward(ctx, h, weight, targets, ignore_index):
        h, weight = h.contiguous(), weight.contiguous()
        N, C = h.shape
        V = weight.shape[0]
        loss = torch.empty(N, device=h.device, dtype=torch.float32)
        lse = torch.empty(N, device=h.device, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]),)  # noqa: E731
        _lce_fwd[grid](h, weight, targets, loss, lse, N, V, C, h.stride(0), weight.stride(0), ignore_index,
                       PRECISION=dot_precision(h))
        n_valid = (targets != ignore_index).sum().clamp(min=1)
        ctx.save_for_backward(h, weight, targets, lse, n_valid)
        ctx.ignore_index = ignore_index
        return loss.sum() / n_valid

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, dloss):
        h, weight, targets, lse, n_valid = ctx.saved_tensors
        scale = (dloss / n_valid).float().reshape(1)             # no .item(): no host-device sync
        if BACKWARD == "chunked":
            return *_chunked_backward(h, weight, targets, scale, ctx.ignore_index), None, None
        N, C = h.shape
        V = weight.shape[0]
        dh = torch.zeros(N, C, device=h.device, dtype=torch.float32)
        dw = torch.zeros(V, C, device=h.device, dtype=torch.float32)
        grid = lambda meta: (triton.cdiv(N, meta["BLOCK_M"]), triton.cdiv(V, meta["BLOCK_V"]))  # noqa: E731
        _lce_bwd[grid](h, weight, targets, lse, dh, dw, scale, N, V, C, h.stride(0), weight.stride(0),
                       ctx.ignore_index, PRECISION=dot_precision(h))
        return dh.to(h.dtype), dw.to(weight.dtype), None, None


def linear_cross_entropy(h, weight, targets, ignore_index=-100):
    """Mean cross-entropy of h @ weight^T against targets; h (N, C), weight (V, C), targets (N,)."""
    return LinearCrossEntropyFunction.apply(h, weight, targets.contiguous(), ignore_index)
