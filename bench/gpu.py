"""One GPU script, at most 4 minutes: first check results on the device, then time training.

Checks (fail loudly, before any timing): the model's loss and gradients on the device equal
the CPU's (fp32); bf16 autocast stays close to fp32; KV-cache generation equals the full
forward pass; a few AdamW steps lower the loss.
Timing: the `gpt2` preset (124M parameters, GPT-2's 50,304-id vocabulary, block 1,024) in bf16
autocast, eager with our Triton kernels, eager with their PyTorch twins (what the kernels buy),
and torch.compile'd: tokens/s and MFU against the datasheet dense bf16 peak (989 TFLOP/s for
H100/H200). Kernels (CUDA only): each Triton kernel against its twin on the
device, then against torch's best (flash SDPA, F.rms_norm, F.cross_entropy, cuBLAS) in TFLOP/s
or GB/s and as a ratio, with a measured copy bandwidth for the memory-bound ones; at the end,
the configuration each autotuned kernel chose.

Written for torch 2.11 / Triton 3.6 (the versions on the GPU machine we test on): no newer API.
Each part runs on its own: a failure is recorded in gpu.json's "errors" and printed, the other
parts still run (GPU time is scarce), gpu.json is rewritten after every part, and the exit
status is 1 if anything failed.

Run:
    python bench/gpu.py                         # on a CUDA machine; prints a table, writes JSON
    python bench/gpu.py --device cpu --preset tiny --steps 2 --no-compile   # a smoke run
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import training  # noqa: E402
from bench.train import step_time  # noqa: E402
from model import GPT, PRESETS, GPTConfig, flops_per_token  # noqa: E402


def check(device):
    """Correctness on the device, on a small model."""
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=512, block_size=128, n_layer=2, n_head=4, n_kv_head=2, n_embd=128)
    cpu = GPT(cfg)
    dev = GPT(cfg).to(device)
    dev.load_state_dict(cpu.state_dict())
    x = torch.randint(0, 512, (4, 128))
    y = torch.roll(x, -1, 1)
    l_cpu = cpu(x, y)
    l_cpu.backward()
    l_dev = dev(x.to(device), y.to(device))
    l_dev.backward()
    assert abs(l_cpu.item() - l_dev.item()) < 1e-4, f"fp32 loss differs: {l_cpu.item()} vs {l_dev.item()}"
    worst = max((a.grad - b.grad.cpu()).abs().max().item() for a, b in zip(cpu.parameters(), dev.parameters()))
    assert worst < 1e-4, f"fp32 gradients differ by {worst}"
    if str(device).startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            l_bf = dev(x.to(device), y.to(device))
        assert abs(l_bf.item() - l_dev.item()) < 0.05, f"bf16 loss {l_bf.item()} far from fp32 {l_dev.item()}"
    dev.eval()
    out = dev.generate([[1, 2, 3], [4]], 16, temperature=0)
    for prompt, new in zip([[1, 2, 3], [4]], out):
        seq = list(prompt)
        for _ in range(16):
            logits = dev(torch.tensor([seq], device=device))
            seq.append(int(logits[0, -1].argmax()))
        assert seq[len(prompt):] == new, "KV-cache generation differs from the full forward"
    dev.train()
    opt = training.AdamW(training.param_groups(dev, 0.0), lr=3e-3)
    first = None
    for _ in range(20):
        loss = dev(x.to(device), y.to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = first or loss.item()
    assert loss.item() < first - 0.5, f"loss did not fall: {first} -> {loss.item()}"
    return {"fp32_loss_cpu": l_cpu.item(), "fp32_loss_device": l_dev.item(), "max_grad_diff": worst}


def check_kernels(device):
    """Each Triton kernel against its twin on the device, bf16 where training uses it: the
    largest difference per kernel, or the error it raised (one broken kernel must not hide
    the others). Raises at the end if any kernel failed or disagrees by more than 0.1."""
    from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy, triton_matmul,
                         triton_rmsnorm, triton_swiglu, twins)
    torch.manual_seed(0)
    bf = torch.bfloat16

    def attention(T, D, causal):
        q, k, v = (torch.randn(2, 8, T, D, device=device, dtype=bf, requires_grad=True) for _ in range(3))
        o1 = triton_attention.attention(q, k, v, causal)
        o1.float().sum().backward()
        g1 = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        o2 = twins.attention(q, k, v, causal)
        o2.float().sum().backward()
        return max((o1 - o2).abs().max().item(), *[(a - t.grad).abs().max().item() for a, t in zip(g1, (q, k, v))])

    def linear_cross_entropy(backward):
        h = torch.randn(1000, 768, device=device, dtype=bf, requires_grad=True)
        w = (torch.randn(50304, 768, device=device, dtype=bf) * 0.02).requires_grad_()
        t = torch.randint(0, 50304, (1000,), device=device)
        grads = []
        for fn in (triton_linear_cross_entropy.linear_cross_entropy, twins.linear_cross_entropy):
            with triton_linear_cross_entropy.backward_pass(backward):
                loss = fn(h, w, t)
                loss.backward()
            grads.append((loss.item(), h.grad.float().clone(), w.grad.float().clone()))
            h.grad = w.grad = None
        (l1, dh1, dw1), (l2, dh2, dw2) = grads
        return max(abs(l1 - l2), ((dh1 - dh2).abs().max() / dh2.abs().max()).item(),
                   ((dw1 - dw2).abs().max() / dw2.abs().max()).item())

    x = torch.randn(4096, 768, device=device, dtype=bf)
    w = torch.randn(768, device=device, dtype=bf)
    logits = torch.randn(512, 50304, device=device, dtype=bf)
    t = torch.randint(0, 50304, (512,), device=device)
    a, b = torch.randn(1000, 700, device=device, dtype=bf), torch.randn(700, 900, device=device, dtype=bf)
    checks = {
        "attention T=1000 D=64 causal": lambda: attention(1000, 64, True),
        "attention T=256 D=128": lambda: attention(256, 128, False),
        "rms_norm": lambda: (triton_rmsnorm.rms_norm(x, w, 1e-5) - twins.rms_norm(x, w, 1e-5)).abs().max().item(),
        "swiglu": lambda: (triton_swiglu.swiglu(x, x) - twins.swiglu(x, x)).abs().max().item(),
        "cross_entropy": lambda: abs(triton_cross_entropy.cross_entropy(logits, t).item()
                                     - twins.cross_entropy(logits, t).item()),
        "linear_cross_entropy": lambda: linear_cross_entropy("fused"),
        "linear_cross_entropy (chunked backward)": lambda: linear_cross_entropy("chunked"),
        "matmul (relative)": lambda: ((triton_matmul.matmul(a, b).float() - (a @ b).float()).abs().max()
                                      / (a @ b).float().abs().max()).item(),
    }
    worst = {}
    for name, fn in checks.items():
        try:
            worst[name] = fn()
        except Exception as e:                 # a compile error in one kernel: record it, go on
            worst[name] = f"error: {type(e).__name__}: {e}"[:500]
    print(json.dumps(worst, indent=1))
    bad = {n: e for n, e in worst.items() if isinstance(e, str) or e > 0.1}
    assert not bad, f"kernels fail or disagree with their twins: {list(bad)}"
    return worst


def time_kernels(device):
    """Each kernel against its twin and torch's best, bf16: TFLOP/s or GB/s and the ratio.
    Rows (name, unit, ours, torch's best, ratio); a group that raises becomes one error row
    and the others still run."""
    import torch.nn.functional as F
    from triton.testing import do_bench
    from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy, triton_matmul,
                         triton_rmsnorm, triton_swiglu, twins)
    bf = torch.bfloat16

    def copy_bandwidth():
        big = torch.empty(1 << 28, device=device, dtype=bf)                      # 512 MB
        bandwidth = 2 * big.numel() * 2 / (do_bench(lambda: big.clone()) * 1e-3)  # read + write, bytes/s
        return [("memory copy (the bandwidth the memory-bound kernels aim at)", "GB/s", bandwidth / 1e9, None, None)]

    def attention():
        rows = []
        for D in (64, 128):
            for T in (1024, 2048, 4096, 8192):
                B, H = max(1, 16384 // T), 2048 // D
                q, k, v = (torch.randn(B, H, T, D, device=device, dtype=bf, requires_grad=True) for _ in range(3))
                flops = 4 * B * H * T * T * D * 0.5 * 3.5                        # causal, forward + backward (2.5x)

                def step(fn):
                    o = fn(q, k, v, True)
                    o.backward(torch.ones_like(o))
                ours = do_bench(lambda: step(triton_attention.attention))
                sdpa = do_bench(lambda: step(lambda a, b, c, causal: F.scaled_dot_product_attention(a, b, c, is_causal=causal)))
                rows.append((f"attention fwd+bwd D={D} T={T}", "TFLOP/s", flops / ours * 1e-9, flops / sdpa * 1e-9,
                             sdpa / ours))
        return rows

    def elementwise():
        rows = []
        x = torch.randn(16384, 4096, device=device, dtype=bf)
        w = torch.ones(4096, device=device, dtype=bf)
        nbytes = 2 * x.numel() * 2
        for name, ours_fn, twin_fn, best_fn in (
                ("rms_norm forward", lambda: triton_rmsnorm.rms_norm(x, w, 1e-5), lambda: twins.rms_norm(x, w, 1e-5),
                 lambda: F.rms_norm(x, (4096,), w, 1e-5)),
                ("swiglu forward", lambda: triton_swiglu.swiglu(x, x), lambda: twins.swiglu(x, x), lambda: F.silu(x) * x)):
            ours, twin, best = do_bench(ours_fn), do_bench(twin_fn), do_bench(best_fn)
            moved = nbytes * (1.5 if name.startswith("swiglu") else 1)
            rows.append((name, "GB/s", moved / ours * 1e-6, moved / best * 1e-6, best / ours))
            rows.append((f"  {name}: twin", "GB/s", moved / twin * 1e-6, None, None))
        return rows

    def peak_and_time(fn):
        """(ms, peak GB above what was allocated before) of fn().backward()."""
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ms = do_bench(lambda: fn().backward())
        return ms, (torch.cuda.max_memory_allocated() - base) / 1e9

    t = torch.randint(0, 50304, (16384,), device=device)

    def cross_entropy():
        logits = torch.randn(16384, 50304, device=device, dtype=bf, requires_grad=True)
        return [(f"cross_entropy fwd+bwd 16384x50304 ({name})", "ms | peak GB", *peak_and_time(fn), None)
                for name, fn in (("ours", lambda: triton_cross_entropy.cross_entropy(logits, t)),
                                 ("torch", lambda: F.cross_entropy(logits.float(), t)))]

    def linear_cross_entropy():
        # the LM head and the loss together, our two backward passes (the fused one with atomic
        # adds, the chunked one with cuBLAS) vs F.linear + F.cross_entropy
        h = torch.randn(16384, 768, device=device, dtype=bf, requires_grad=True)
        w = (torch.randn(50304, 768, device=device, dtype=bf) * 0.02).requires_grad_()
        name = "linear_cross_entropy fwd+bwd 16384x768 @ 768x50304"
        rows = []
        for backward in triton_linear_cross_entropy.BACKWARDS:
            with triton_linear_cross_entropy.backward_pass(backward):
                rows.append((f"{name} (ours, {backward} backward)", "ms | peak GB",
                             *peak_and_time(lambda: triton_linear_cross_entropy.linear_cross_entropy(h, w, t)), None))
        return rows + [(f"{name} (torch)", "ms | peak GB",
                        *peak_and_time(lambda: F.cross_entropy(F.linear(h, w).float(), t)), None)]

    def matmul():
        a, b = torch.randn(4096, 4096, device=device, dtype=bf), torch.randn(4096, 4096, device=device, dtype=bf)
        flops = 2 * 4096 ** 3
        ours, cublas = do_bench(lambda: triton_matmul.matmul(a, b)), do_bench(lambda: a @ b)
        return [("matmul 4096^3", "TFLOP/s", flops / ours * 1e-9, flops / cublas * 1e-9, cublas / ours)]

    rows = []
    for group in (copy_bandwidth, attention, elementwise, cross_entropy, linear_cross_entropy, matmul):
        try:
            rows += group()
        except Exception as e:                 # record it and time the rest
            rows.append((f"{group.__name__} failed: {type(e).__name__}: {e}"[:300], "error", None, None, None))
        torch.cuda.empty_cache()
    return rows


def autotune_choices():
    """The configuration each autotuned kernel chose, per tuning key (head dim and mask for
    attention; sizes for the fused loss and the matmul): which candidates earn their place."""
    from kernels import triton_attention, triton_linear_cross_entropy, triton_matmul
    tuners = {"attention forward": triton_attention._attn_fwd,
              "attention dK/dV": triton_attention._attn_bwd_dkdv,
              "attention dQ": triton_attention._attn_bwd_dq,
              "linear_cross_entropy forward": triton_linear_cross_entropy._lce_fwd,
              "linear_cross_entropy backward": triton_linear_cross_entropy._lce_bwd,
              "matmul": triton_matmul._matmul}
    return {name: {str(key): str(config) for key, config in tuner.cache.items()} for name, tuner in tuners.items()}


def time_training(device, preset, micro_batch, steps, compile_model, dtype, backend="auto"):
    """Tokens/s and MFU of a training step; backend "torch" runs the twins instead of our
    Triton kernels (the difference is what the kernels buy)."""
    import kernels
    cfg = GPTConfig(vocab_size=50304 if preset.startswith("gpt2") else 8192, **PRESETS[preset])
    is_cuda = device.type == "cuda"
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    kernels.set_backend(backend)
    try:
        dt, n = step_time(cfg, micro_batch, dtype, steps, device, compile_model, warmup=2)
    finally:
        kernels.set_backend("auto")
    tokens = micro_batch * cfg.block_size
    peak = training.peak_flops(device, dtype)
    achieved = tokens / dt * flops_per_token(cfg, n)
    return {"preset": preset, "params": n, "dtype": dtype, "compiled": compile_model, "kernels": backend,
            "tokens_per_step": tokens, "step_s": dt, "tokens_per_s": tokens / dt,
            "model_tflops": achieved / 1e12, "peak_tflops": peak / 1e12 if peak else None,
            "mfu": achieved / peak if peak else None,
            "max_memory_gb": torch.cuda.max_memory_allocated() / 1e9 if is_cuda else None}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (or cpu for a smoke run)")
    p.add_argument("--preset", default="gpt2", help="model size to time")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per step")
    p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile timing")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu.json")
    args = p.parse_args()
    device = torch.device(args.device)
    info = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    t0 = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def section(name, fn):
        """Run one part; an exception is recorded and printed, not fatal, so one failure does
        not cost the other figures of a scarce GPU run. gpu.json is rewritten after each part."""
        t = time.time()
        try:
            info[name] = fn()
        except Exception as e:
            info.setdefault("errors", {})[name] = f"{type(e).__name__}: {e}"[:1000]
            traceback.print_exc()
        info.setdefault("seconds", {})[name] = round(time.time() - t, 1)
        (out / "gpu.json").write_text(json.dumps(info, indent=2))
        print(f"[{name}: {'failed' if name in info.get('errors', {}) else 'ok'}, {time.time() - t:.0f} s]", flush=True)

    section("checks", lambda: check(device))
    is_cuda = device.type == "cuda"
    if is_cuda:
        section("kernel_checks", lambda: check_kernels(device))
        section("kernels", lambda: time_kernels(device))
        print("\n| kernel | unit | ours | torch's best | ratio ours/torch |")
        print("|---|---|---:|---:|---:|")
        for name, unit, ours, best, ratio in info.get("kernels", []):
            fmt = lambda x: "-" if x is None else f"{x:,.2f}"  # noqa: E731
            print(f"| {name} | {unit} | {fmt(ours)} | {fmt(best)} | {fmt(ratio)} |")
    dtype = "bf16" if is_cuda else "fp32"
    configs = [(False, "auto")] + [(False, "torch")] * is_cuda + [(True, "auto")] * (not args.no_compile)
    runs = []
    for compiled, backend in configs:
        name = f"training {args.preset} {'compiled' if compiled else 'eager'} kernels={backend}"
        section(name, lambda: time_training(device, args.preset, args.micro_batch, args.steps, compiled, dtype, backend))
        if name in info:
            runs.append(info.pop(name))
            info["training"] = runs
    if is_cuda:                                 # after training, so its shapes are in too
        section("autotune_choices", autotune_choices)
    (out / "gpu.json").write_text(json.dumps(info, indent=2))
    print("\n| preset | params | dtype | compiled | kernels | tokens/s | model TFLOP/s | MFU | memory GB |")
    print("|---|---:|---|---|---|---:|---:|---:|---:|")
    for r in runs:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        mem = f"{r['max_memory_gb']:.1f}" if r["max_memory_gb"] is not None else "-"
        print(f"| {r['preset']} | {r['params'] / 1e6:.0f}M | {r['dtype']} | {r['compiled']} | {r['kernels']} | "
              f"{r['tokens_per_s']:,.0f} | {r['model_tflops']:.1f} | {mfu} | {mem} |")
    errors = info.get("errors", {})
    print(f"\n{time.time() - t0:.0f} s in all; results in {out / 'gpu.json'}"
          + (f"; FAILED: {', '.join(errors)}" if errors else ""))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
