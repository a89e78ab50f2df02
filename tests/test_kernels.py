"""kernels/: every Triton kernel against its PyTorch twin, forward and backward, on the CPU
through Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py); and every kernel, in
every autotune configuration, compiled for a Hopper GPU by bench/compile.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy, triton_matmul,
                     triton_rmsnorm, triton_swiglu, twins)
from kernels.precision import dot_precision

TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-2, rtol=1e-2)}


def grads(fn, *inputs, seed=0):
    """Outputs and input gradients of fn under a fixed random upstream gradient."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*inputs)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out.dtype)
    (out.float() * g.float()).sum().backward()
    return out.detach(), [t.grad for t in inputs if t.requires_grad]


def assert_same(ours, ref, dtype):
    (o1, g1), (o2, g2) = ours, ref
    assert torch.allclose(o1.float(), o2.float(), **TOL[dtype])
    for a, b in zip(g1, g2):
        assert torch.allclose(a.float(), b.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(3, 7, 64), (5, 100)])          # a width that is not a power of 2
def test_rms_norm(dtype, shape):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    w = (1 + 0.1 * torch.randn(shape[-1])).to(dtype)
    assert_same(grads(lambda a, b: triton_rmsnorm.rms_norm(a, b, 1e-5), x, w),
                grads(lambda a, b: twins.rms_norm(a, b, 1e-5), x, w), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_swiglu(dtype):
    torch.manual_seed(0)
    a, b = torch.randn(3, 100, 37).to(dtype), torch.randn(3, 100, 37).to(dtype)
    assert_same(grads(triton_swiglu.swiglu, a, b), grads(twins.swiglu, a, b), dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_cross_entropy_with_ignored_rows_and_a_ragged_vocabulary(dtype):
    torch.manual_seed(0)
    logits = (3 * torch.randn(50, 5000)).to(dtype)                  # V = 5000: chunked, ragged end
    targets = torch.randint(0, 5000, (50,))
    targets[::7] = -100
    ours = grads(lambda l: triton_cross_entropy.cross_entropy(l, targets, -100), logits)
    ref = grads(lambda l: twins.cross_entropy(l, targets, -100), logits)
    assert_same(ours, ref, dtype)
    assert ours[1][0].dtype == dtype                                  # the gradient stays in dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("backward", ["fused", "chunked"])
def test_linear_cross_entropy_never_stores_the_logits_and_equals_the_twin(monkeypatch, dtype, backward):
    """The fused LM head + loss against F.linear + cross-entropy: 37 rows (ragged row tiles),
    V = 301 (a ragged vocabulary tile), C = 40 (a ragged hidden tile), ignored rows; the loss
    and the gradients of both h and the weight, from either backward pass (the chunked one in
    chunks of 10 rows, the last one ragged)."""
    monkeypatch.setattr(triton_linear_cross_entropy, "CHUNK_LOGITS", 10 * 301)
    torch.manual_seed(0)
    h, w = torch.randn(37, 40).to(dtype), (0.5 * torch.randn(301, 40)).to(dtype)
    targets = torch.randint(0, 301, (37,))
    targets[::5] = -100
    with triton_linear_cross_entropy.backward_pass(backward):
        ours = grads(lambda a, b: triton_linear_cross_entropy.linear_cross_entropy(a, b, targets, -100), h, w)
    ref = grads(lambda a, b: twins.linear_cross_entropy(a, b, targets, -100), h, w)
    assert_same(ours, ref, dtype)
    assert [g.dtype for g in ours[1]] == [dtype, dtype]


def test_backend_dispatch(kernel_backend):
    x = torch.randn(4, 8)
    kernel_backend("torch")
    assert torch.equal(kernels.rms_norm(x, torch.ones(8), 1e-5), twins.rms_norm(x, torch.ones(8), 1e-5))
    kernel_backend("triton")                          # allowed here: the interpreter is on
    assert torch.allclose(kernels.swiglu(x, x), twins.swiglu(x, x), atol=1e-6)
    with pytest.raises(ValueError):
        kernel_backend("cuda")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T, D, n_kv_head", [(100, 32, 4), (64, 64, 2), (37, 128, 1)])
def test_attention(dtype, causal, T, D, n_kv_head):
    """Ragged lengths (100, 37: edge tiles masked), head dims 32/64/128, grouped heads."""
    torch.manual_seed(0)
    q = torch.randn(2, 4, T, D).to(dtype)
    k = torch.randn(2, n_kv_head, T, D).to(dtype)
    v = torch.randn(2, n_kv_head, T, D).to(dtype)
    ours = grads(lambda a, b, c: triton_attention.attention(a, b, c, causal), q, k, v)
    ref = grads(lambda a, b, c: twins.attention(a.float(), b.float(), c.float(), causal).to(dtype), q, k, v)
    assert_same(ours, ref, dtype)


def test_attention_with_the_causal_mask_equals_the_causal_kernel(kernel_backend):
    """A mask runs the twin, whatever the backend, and replaces `causal`: the causal mask
    itself gives what the Triton kernel's causal path gives (grouped heads, ragged T)."""
    kernel_backend("triton")                          # the causal path: the Triton kernel
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 37, 32), torch.randn(2, 2, 37, 32), torch.randn(2, 2, 37, 32)
    causal_mask = torch.ones(37, 37, dtype=torch.bool).tril()          # True = may attend
    fused = kernels.attention(q, k, v, causal=True)
    for causal in (True, False):                      # ignored once there is a mask
        assert torch.allclose(kernels.attention(q, k, v, causal=causal, mask=causal_mask), fused,
                              **TOL[torch.float32])


def test_masked_attention_with_grouped_heads_equals_repeat_interleave(kernel_backend):
    """Generation's case: 3 new queries against 7 cached keys, the first prompt left-padded by
    two; 4 query heads share 2 kv heads. The reference expands the kv heads by hand."""
    kernel_backend("triton")                          # the mask must still reach the twin
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 3, 32), torch.randn(2, 2, 7, 32), torch.randn(2, 2, 7, 32)
    mask = (torch.arange(7)[None, :] <= torch.arange(4, 7)[:, None]).repeat(2, 1, 1, 1)  # (B, 1, Tq, Tk)
    mask[0, :, :, :2] = False
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1),
                                         attn_mask=mask)
    assert torch.allclose(kernels.attention(q, k, v, mask=mask), ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_matmul_ragged_shapes(dtype):
    torch.manual_seed(0)
    a, b = torch.randn(70, 45).to(dtype), torch.randn(45, 99).to(dtype)
    assert torch.allclose(triton_matmul.matmul(a, b).float(), (a.float() @ b.float()), **TOL[dtype])


def test_attention_tiles_of_unequal_sides_under_the_interpreter():
    """The interpreter runs one configuration per kernel; those of the attention kernels have
    unequal sides (the causal bounds must hold when query and key tiles do not line up), and
    the forward and dQ kernels' differ from dK/dV's (tall query tiles vs tall key tiles)."""
    for tuner in (triton_attention._attn_fwd, triton_attention._attn_bwd_dkdv, triton_attention._attn_bwd_dq):
        (config,) = tuner.configs
        assert config.kwargs["BLOCK_M"] != config.kwargs["BLOCK_N"]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("i", range(3))
def test_attention_in_every_gpu_tile_shape(monkeypatch, i, causal):
    """The GPU's autotune candidates run here too, one shape of each kernel at a time, with
    T = 100 (ragged in every shape) and grouped heads: forward tiles wider than tall included."""
    import triton
    for tuner, tiles in ((triton_attention._attn_fwd, triton_attention.FWD_TILES),
                         (triton_attention._attn_bwd_dkdv, triton_attention.DKDV_TILES),
                         (triton_attention._attn_bwd_dq, triton_attention.DQ_TILES)):
        m, n, _, _ = tiles[i]
        monkeypatch.setattr(tuner, "configs", [triton.Config({"BLOCK_M": m, "BLOCK_N": n})])
    torch.manual_seed(i)
    q, k, v = torch.randn(1, 4, 100, 32), torch.randn(1, 2, 100, 32), torch.randn(1, 2, 100, 32)
    assert_same(grads(lambda a, b, c: triton_attention.attention(a, b, c, causal), q, k, v),
                grads(lambda a, b, c: twins.attention(a, b, c, causal), q, k, v), torch.float32)


def test_fp32_products_follow_torchs_matmul_precision():
    """Triton's default for fp32 tl.dot is one TF32 product (~1e-3); torch multiplies fp32
    exactly unless told otherwise, and the kernels follow torch's setting."""
    x, h = torch.zeros(2, dtype=torch.float32), torch.zeros(2, dtype=torch.bfloat16)
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        assert (dot_precision(x), dot_precision(h)) == ("tf32x3", "tf32")
        torch.set_float32_matmul_precision("high")
        assert dot_precision(x) == "tf32"
    finally:
        torch.set_float32_matmul_precision(before)


ROOT = Path(__file__).resolve().parent.parent


def compile_report(tmp_path, *flags):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compile.json"
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "compile.py"), *flags, "--json", str(out)],
                         env=env, capture_output=True, text=True, cwd=ROOT)
    return run, (json.loads(out.read_text()) if out.exists() else None)


def test_every_kernel_and_configuration_compiles_for_hopper_and_fits(tmp_path):
    """What the interpreter cannot see: each kernel of a bf16 training step, in each autotune
    configuration, through Triton's compiler and ptxas for sm_90 (H100, H200), fits the SM's
    shared memory, needs no local memory (no spills), and runs its tl.dot on the tensor cores (wgmma). Head
    dim 128 only: the largest tiles, and the suite's time budget."""
    run, report = compile_report(tmp_path, "--arch", "90", "--dtypes", "bf16", "--head-dims", "128")
    assert run.returncode == 0, run.stderr[-2000:]
    rows = report["kernels"]
    seen = {r["kernel"] for r in rows}
    assert seen == {"_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq", "_rms_norm_fwd", "_rms_norm_bwd", "_swiglu_fwd",
                    "_swiglu_bwd", "_ce_fwd", "_ce_bwd", "_lce_fwd", "_lce_bwd", "_matmul"}
    for name in ("_attn_fwd", "_attn_bwd_dkdv", "_attn_bwd_dq", "_lce_fwd", "_lce_bwd", "_matmul"):
        configs = {json.dumps(r["constexprs"]) for r in rows if r["kernel"] == name}
        assert len(configs) >= 3, name                # every autotune configuration, not the first only
    for r in rows:
        assert r["fits"] and r["local_bytes"] == 0 and r["programs_per_sm"] >= 1, r
        if r["kernel"].startswith(("_attn", "_lce", "_matmul")):
            assert r["tensor_cores"] == "wgmma", r


def test_compile_report_refuses_the_interpreter(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    run = subprocess.run([sys.executable, str(ROOT / "bench" / "compile.py")], env=env, capture_output=True,
                         text=True, cwd=ROOT)
    assert run.returncode == 1 and run.stderr.strip().startswith("error: unset TRITON_INTERPRET")
