"""Causal (or not) softmax attention in the style of FlashAttention-2 (Dao 2023).

    O = softmax(scale * Q K^T + mask) V         Q, K, V, O: (B, n_head, T, head_dim)

The T x T score matrix never exists in memory. Each program owns a tile of BLOCK_M queries,
keeps it in registers and streams the keys and values past it in tiles of BLOCK_N, with an
online softmax: a running row maximum m and a running sum l of exp(s - m), and the output
accumulator rescaled by exp(m_old - m_new) whenever m grows. With a causal mask, key tiles
entirely above the diagonal are skipped (half the work). Only O and one log-sum-exp per query
row are written, so memory is O(T), not O(T^2).

The backward pass recomputes the probabilities P = exp(scale * Q K^T - lse) tile by tile
instead of storing them, with Delta_i = sum_d dO_id O_id:
    dV = P^T dO      dP = dO V^T      dS = P * (dP - Delta)      dQ = scale dS K      dK = scale dS^T Q
One kernel walks query tiles, computes Delta for them (so no fp32 copies of dO and O are made
for it) and accumulates dQ; another then walks key tiles and accumulates dK, dV over the query
tiles that see them: no atomics. Exponentials use exp2 with log2(e) folded into the scale.
Grouped-query attention: query head h reads key/value head h // (n_head / n_kv_head);
dK, dV are summed over each group afterwards. Any T works: edge tiles are masked.
"""

import math
import os

import torch
import triton
import triton.language as tl

from kernels.precision import dot_precision

LOG2E = 1.4426950408889634  # = 1 / ln(2)
# The head sizes the kernels are built and tested for: powers of 2 (tl.arange needs one) up
# to 128 (the size the tiles below were chosen for). kernels.attention sends others to the twin.
HEAD_DIMS = (32, 64, 128)


# Autotune candidates on a GPU, each (BLOCK_M queries, BLOCK_N keys, warps, pipeline stages),
# tuned once per head size and mask, not per length: evaluation calls attention with a new T
# for nearly every batch, and tuning each would cost more than it saves. The candidates are
# the tile shapes that need no local memory (no spilled registers) on sm_90 at head dims up to
# 128 (bench/compile.py reads it from the compiled code; 64 x 64 tiles on 4 warps, say, spill
# in the dK/dV kernel at head dim 128). Forward: larger query tiles reuse each key tile for
# more queries. dK/dV: a program owns BLOCK_N keys and streams queries past them in steps of
# BLOCK_M; dQ mirrors it.
FWD_TILES = [(64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3)]
DKDV_TILES = [(32, 64, 4, 3), (64, 64, 8, 3), (32, 128, 8, 3)]
DQ_TILES = [(64, 32, 4, 3), (64, 64, 8, 3), (128, 32, 8, 3)]


def _configs(tiles):
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in tiles]


FWD_CONFIGS, DKDV_CONFIGS, DQ_CONFIGS = _configs(FWD_TILES), _configs(DKDV_TILES), _configs(DQ_TILES)
if os.environ.get("TRITON_INTERPRET") == "1":               # no benchmarking: one configuration
    # each, with tiles of unequal sides so that the tests cover the causal bounds of tiles that
    # do not line up (and the tests run every GPU shape through it too)
    FWD_CONFIGS, DKDV_CONFIGS, DQ_CONFIGS = (_configs([(64, 32, 4, 1)]), _configs([(32, 64, 4, 1)]),
                                             _configs([(64, 32, 4, 1)]))


@triton.autotune(configs=FWD_CONFIGS, key=["D", "CAUSAL"])
@triton.jit
def _attn_fwd(Q, K, V, O, LSE, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, T, H, GROUP, qk_scale,
              CAUSAL: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q = tl.load(Q + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :],
                mask=offs_m[:, None] < T, other=0.0)                              # (BLOCK_M, D)
    k_base = K + b * sk_b + hk * sk_h
    v_base = V + b * sk_b + hk * sk_h
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    hi = T
    if CAUSAL:                                                                    # skip tiles above the diagonal
        hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[None, :] * sk_t + offs_d[:, None], mask=cols[None, :] < T, other=0.0)  # (D, BLOCK_N)
        s = tl.dot(q, k, input_precision=PRECISION) * qk_scale                       # (BLOCK_M, BLOCK_N), log2 units
        valid = cols[None, :] < T
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= cols[None, :])
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)                                              # rescale what came before
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * sk_t + offs_d[None, :], mask=cols[:, None] < T, other=0.0)  # (BLOCK_N, D)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    acc = acc / l_i[:, None]
    tl.store(O + b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=offs_m[:, None] < T)
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_i), mask=offs_m < T)         # log2-sum-exp2 of s


@triton.autotune(configs=DKDV_CONFIGS, key=["D", "CAUSAL"])
@triton.jit
def _attn_bwd_dkdv(Q, K, V, DO, LSE, DELTA, DK, DV, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, T, H, GROUP,
                   qk_scale, sm_scale, CAUSAL: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dK and dV of one key tile, for one query head, over all query tiles that see it."""
    pid_n, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    hk = h // GROUP
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    kv_mask = offs_n[:, None] < T
    k = tl.load(K + b * sk_b + hk * sk_h + offs_n[:, None] * sk_t + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * sk_b + hk * sk_h + offs_n[:, None] * sk_t + offs_d[None, :], mask=kv_mask, other=0.0)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    q_base = Q + b * sq_b + h * sq_h
    do_base = DO + b * sq_b + h * sq_h
    lo = 0
    if CAUSAL:                                                                    # earlier queries cannot see these keys
        lo = pid_n * BLOCK_N
    for start_m in range(lo, T, BLOCK_M):
        rows = start_m + offs_m
        q = tl.load(q_base + rows[:, None] * sq_t + offs_d[None, :], mask=rows[:, None] < T, other=0.0)
        do = tl.load(do_base + rows[:, None] * sq_t + offs_d[None, :], mask=rows[:, None] < T, other=0.0)
        lse = tl.load(LSE + bh * T + rows, mask=rows < T, other=0.0)
        delta = tl.load(DELTA + bh * T + rows, mask=rows < T, other=0.0)
        sT = tl.dot(k, tl.trans(q), input_precision=PRECISION) * qk_scale            # (BLOCK_N, BLOCK_M)
        valid = (rows[None, :] < T) & (offs_n[:, None] < T)
        if CAUSAL:
            valid = valid & (rows[None, :] >= offs_n[:, None])
        pT = tl.where(valid, tl.exp2(sT - lse[None, :]), 0.0)
        dv += tl.dot(pT.to(do.dtype), do, input_precision=PRECISION)
        dpT = tl.dot(v, tl.trans(do), input_precision=PRECISION)                     # (BLOCK_N, BLOCK_M)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=PRECISION)
    out = b * sq_b + h * sq_h + offs_n[:, None] * sq_t + offs_d[None, :]         # per query head
    tl.store(DK + out, (dk * sm_scale).to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + out, dv.to(DV.dtype.element_ty), mask=kv_mask)


@triton.autotune(configs=DQ_CONFIGS, key=["D", "CAUSAL"])
@triton.jit
def _attn_bwd_dq(Q, K, V, O, DO, LSE, DELTA, DQ, sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, T, H, GROUP,
                 qk_scale, sm_scale, CAUSAL: tl.constexpr, D: tl.constexpr, PRECISION: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dQ of one query tile over the key tiles it sees; first Delta of its rows, which it
    needs and writes for the dK/dV kernel (each query tile is read here once anyway)."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    hk = h // GROUP
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    q_ptrs = b * sq_b + h * sq_h + offs_m[:, None] * sq_t + offs_d[None, :]
    q = tl.load(Q + q_ptrs, mask=offs_m[:, None] < T, other=0.0)
    do = tl.load(DO + q_ptrs, mask=offs_m[:, None] < T, other=0.0)
    o = tl.load(O + q_ptrs, mask=offs_m[:, None] < T, other=0.0)
    delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), axis=1)                 # Delta_i = dO_i . O_i
    tl.store(DELTA + bh * T + offs_m, delta, mask=offs_m < T)
    lse = tl.load(LSE + bh * T + offs_m, mask=offs_m < T, other=0.0)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    k_base = K + b * sk_b + hk * sk_h
    v_base = V + b * sk_b + hk * sk_h
    hi = T
    if CAUSAL:
        hi = tl.minimum((pid_m + 1) * BLOCK_M, T)
    for start_n in range(0, hi, BLOCK_N):
        cols = start_n + offs_n
        k = tl.load(k_base + cols[:, None] * sk_t + offs_d[None, :], mask=cols[:, None] < T, other=0.0)
        v = tl.load(v_base + cols[:, None] * sk_t + offs_d[None, :], mask=cols[:, None] < T, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
        valid = (offs_m[:, None] < T) & (cols[None, :] < T)
        if CAUSAL:
            valid = valid & (offs_m[:, None] >= cols[None, :])
        p = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PRECISION)
    tl.store(DQ + q_ptrs, (dq * sm_scale).to(DQ.dtype.element_ty), mask=offs_m[:, None] < T)


class AttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal):
        B, H, T, D = q.shape
        Hkv = k.shape[1]
        if D not in HEAD_DIMS or H % Hkv:
            raise ValueError(f"head_dim {D} must be one of {HEAD_DIMS} and {H} heads a multiple of {Hkv}")
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        o = torch.empty_like(q)
        lse = torch.empty(B * H, T, device=q.device, dtype=torch.float32)
        sm_scale = 1.0 / math.sqrt(D)
        grid = lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)  # noqa: E731
        _attn_fwd[grid](q, k, v, o, lse, q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                        k.stride(2), T, H, H // Hkv, sm_scale * LOG2E, CAUSAL=causal, D=D,
                        PRECISION=dot_precision(q))
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.sm_scale = causal, sm_scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        B, H, T, D = q.shape
        Hkv = k.shape[1]
        do = do.contiguous()
        delta = torch.empty(B * H, T, device=q.device, dtype=torch.float32)      # written by the dQ kernel
        dq = torch.empty_like(q)
        dk = torch.empty(B, H, T, D, device=q.device, dtype=q.dtype)            # per query head
        dv = torch.empty_like(dk)
        args = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2), T, H, H // Hkv,
                ctx.sm_scale * LOG2E, ctx.sm_scale)
        consts = dict(CAUSAL=ctx.causal, D=D, PRECISION=dot_precision(q))
        _attn_bwd_dq[lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H)](q, k, v, o, do, lse, delta, dq,
                                                                         *args, **consts)
        _attn_bwd_dkdv[lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * H)](q, k, v, do, lse, delta, dk, dv,
                                                                           *args, **consts)
        if Hkv != H:                                         # a kv head's gradient: sum over its group
            dk = dk.view(B, Hkv, H // Hkv, T, D).sum(2)
            dv = dv.view(B, Hkv, H // Hkv, T, D).sum(2)
        return dq, dk, dv, None


def attention(q, k, v, causal=True):
    return AttentionFunction.apply(q, k, v, causal)
