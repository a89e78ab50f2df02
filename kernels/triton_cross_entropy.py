"""Cross-entropy over a large vocabulary, in chunks of the vocabulary.

    loss_i = logsumexp(logits_i) - logits_i[target_i],   mean over rows not ignored

torch's F.cross_entropy on bf16 logits first makes an fp32 copy of the whole (rows, V) matrix
for a numerically safe log-softmax, then keeps it for the backward pass: at V = 50,304 and
16 x 1,024 rows that is 3.3 GB. Here each program walks one row in chunks of BLOCK logits with
an online log-sum-exp (a running max m and a running sum s of exp(x - m), rescaled whenever m
grows), so nothing of size V is ever held in fp32; only the row's log-sum-exp is saved. The
backward pass recomputes softmax chunk by chunk:

    d loss / d logits_ij = (softmax_ij - [j == target_i]) / n_valid
"""

import torch
import triton
import triton.language as tl


@triton.jit
def _ce_fwd(LOGITS, TARGETS, LOSS, LSE, stride, V, ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = LOGITS + row * stride
    target = tl.load(TARGETS + row)
    m = -float("inf")
    s = 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(base + cols, mask=cols < V, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(x, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    tl.store(LSE + row, lse)
    if target == ignore_index:
        tl.store(LOSS + row, 0.0)
    else:
        tl.store(LOSS + row, lse - tl.load(base + target).to(tl.float32))


@triton.jit
def _ce_bwd(LOGITS, TARGETS, LSE, DLOGITS, SCALE, stride, V, ignore_index, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    scale = tl.load(SCALE)                                  # d loss / n_valid, read on the device
    target = tl.load(TARGETS + row)
    lse = tl.load(LSE + row)
    keep = target != ignore_index
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(LOGITS + row * stride + cols, mask=mask, other=0.0).to(tl.float32)
        grad = tl.exp(x - lse) - tl.where(cols == target, 1.0, 0.0)
        grad = tl.where(keep, grad * scale, 0.0)
        tl.store(DLOGITS + row * stride + cols, grad, mask=mask)


def _block(V):
    """How many logits a program takes at a time as it walks a row."""
    return min(triton.next_power_of_2(V), 4096)


def row_losses(logits, targets, ignore_index):
    """(loss, log-sum-exp) of each row of logits (M, V): one program per row."""
    M, V = logits.shape
    loss = torch.empty(M, device=logits.device, dtype=torch.float32)
    lse = torch.empty(M, device=logits.device, dtype=torch.float32)
    _ce_fwd[(M,)](logits, targets, loss, lse, logits.stride(0), V, ignore_index, BLOCK=_block(V))
    return loss, lse


def logits_grad(logits, targets, lse, scale, ignore_index, out):
    """d loss / d logits into out, laid out as logits (out may be logits itself: each block of a row is
    read before the same program overwrites it); scale = d loss / n_valid on the device."""
    M, V = logits.shape
    _ce_bwd[(M,)](logits, targets, lse, out, scale, logits.stride(0), V, ignore_index, BLOCK=_block(V))
    return out


class CrossEntropyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ignore_index):
        logits = logits.contiguous()
        loss, lse = row_losses(logits, targets, ignore_index)
        n_valid = (targets != ignore_index).sum().clamp(min=1)
        ctx.save_for_backward(logits, targets, lse, n_valid)
        ctx.ignore_index = ignore_index
        return loss.sum() / n_valid

    @staticmethod
    def backward(ctx, dloss):
        logits, targets, lse, n_valid = ctx.saved_tensors
        scale = (dloss / n_valid).float().reshape(1)       # no .item(): no host-device sync
        dlogits = torch.empty_like(logits)                  # in the logits' dtype, not fp32
        return logits_grad(logits, targets, lse, scale, ctx.ignore_index, dlogits), None, None


def cross_entropy(logits, targets, ignore_index=-100):
    return CrossEntropyFunction.apply(logits, targets.contiguous(), ignore_index)
