"""Fused RMSNorm, forward and backward.

    y = x * rstd * w,   rstd = 1 / sqrt(mean(x^2) + eps)       (per row, in fp32)

Unfused, torch reads x to square it, again to scale it, writes the fp32 intermediate and reads
it back to multiply by w: several passes over (rows, n_embd). Here each program loads one row
once, keeps it in registers, writes y once and saves only rstd (one float per row) for the
backward pass, which recomputes x_hat = x * rstd instead of storing it:

    dx = rstd * (dy*w - x_hat * mean(dy*w * x_hat)),   dw = sum over rows of dy * x_hat
"""

import torch
import triton
import triton.language as tl


def _launch_shape(N):
    """One block holds a whole row; more warps for wider rows keep each thread's share of the
    row (and so its registers) small: the rule of Triton's layer-norm tutorial, one warp per
    256 elements, between 1 and 8."""
    block = triton.next_power_of_2(N)
    return {"BLOCK": block, "num_warps": min(max(block // 256, 1), 8)}


@triton.jit
def _rms_norm_fwd(X, W, Y, RSTD, stride, N, eps, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
    w = tl.load(W + cols, mask=mask, other=0.0)
    y = (x * rstd).to(X.dtype.element_ty) * w            # as the twin: normalise in fp32, cast, scale
    tl.store(Y + row * stride + cols, y, mask=mask)
    tl.store(RSTD + row, rstd)


@triton.jit
def _rms_norm_bwd(X, W, DY, DX, DW_PARTIAL, RSTD, stride, M, N, ROWS_PER_PROGRAM: tl.constexpr,
                  BLOCK: tl.constexpr):
    """Each program handles a run of rows and accumulates its share of dw in registers."""
    pid = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    dw = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(ROWS_PER_PROGRAM):
        row = pid * ROWS_PER_PROGRAM + i
        if row < M:
            x = tl.load(X + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(DY + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
            rstd = tl.load(RSTD + row)
            x_hat = x * rstd
            g = dy * w
            dx = rstd * (g - x_hat * (tl.sum(g * x_hat, axis=0) / N))
            tl.store(DX + row * stride + cols, dx, mask=mask)
            dw += dy * x_hat
    tl.store(DW_PARTIAL + pid * N + cols, dw, mask=mask)


class RMSNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, eps):
        shape = x.shape
        x2 = x.reshape(-1, shape[-1]).contiguous()                       # (rows, N)
        M, N = x2.shape
        y = torch.empty_like(x2)
        rstd = torch.empty(M, device=x.device, dtype=torch.float32)
        _rms_norm_fwd[(M,)](x2, weight, y, rstd, x2.stride(0), N, eps, **_launch_shape(N))
        ctx.save_for_backward(x2, weight, rstd)
        return y.view(shape)

    @staticmethod
    def backward(ctx, dy):
        x2, weight, rstd = ctx.saved_tensors
        M, N = x2.shape
        dy2 = dy.reshape(M, N).contiguous()
        dx = torch.empty_like(x2)
        # at most 1,024 programs: several per SM on a 132-SM GPU (a memory-bound kernel needs
        # many loads in flight), while the fp32 partial sums of dw stay small (1,024 x N)
        rows = max(1, triton.cdiv(M, 1024))
        programs = triton.cdiv(M, rows)
        dw_partial = torch.empty(programs, N, device=x2.device, dtype=torch.float32)
        _rms_norm_bwd[(programs,)](x2, weight, dy2, dx, dw_partial, rstd, x2.stride(0), M, N,
                                   ROWS_PER_PROGRAM=rows, **_launch_shape(N))
        return dx.view(dy.shape), dw_partial.sum(0).to(weight.dtype), None


def rms_norm(x, weight, eps):
    return RMSNormFunction.apply(x, weight, eps)
