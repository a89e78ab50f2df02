"""One GPU script, at most 4 minutes: first check results on the device, then time training.

Checks (fail loudly, before any timing): the model's loss and gradients on the device equal
the CPU's (fp32); bf16 autocast stays close to fp32; KV-cache generation equals the full
forward pass; a few AdamW steps lower the loss.
Timing: the `gpt2` preset (124M parameters, GPT-2's 50,304-id vocabulary, block 1,024) in bf16
autocast, eager and torch.compile'd: tokens/s and MFU against the datasheet dense bf16 peak
(989 TFLOP/s for H100/H200). Kernels (CUDA only): each Triton kernel against its twin on the
device, then against torch's best (flash SDPA, F.rms_norm, F.cross_entropy, cuBLAS) in TFLOP/s
or GB/s and as a ratio, with a measured copy bandwidth for the memory-bound ones.

Written for torch 2.11 / Triton 3.6 (the versions on the GPU machine we test on): no newer API.

Run:
    python bench/gpu.py                         # on a CUDA machine; prints a table, writes JSON
    python bench/gpu.py --device cpu --preset tiny --steps 2 --no-compile   # a smoke run
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train  # noqa: E402
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
    _, l_cpu = cpu(x, y)
    l_cpu.backward()
    _, l_dev = dev(x.to(device), y.to(device))
    l_dev.backward()
    assert abs(l_cpu.item() - l_dev.item()) < 1e-4, f"fp32 loss differs: {l_cpu.item()} vs {l_dev.item()}"
    worst = max((a.grad - b.grad.cpu()).abs().max().item() for a, b in zip(cpu.parameters(), dev.parameters()))
    assert worst < 1e-4, f"fp32 gradients differ by {worst}"
    if str(device).startswith("cuda"):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, l_bf = dev(x.to(device), y.to(device))
        assert abs(l_bf.item() - l_dev.item()) < 0.05, f"bf16 loss {l_bf.item()} far from fp32 {l_dev.item()}"
    dev.eval()
    out = dev.generate([[1, 2, 3], [4]], 16, temperature=0)
    for prompt, new in zip([[1, 2, 3], [4]], out):
        seq = list(prompt)
        for _ in range(16):
            logits, _ = dev(torch.tensor([seq], device=device))
            seq.append(int(logits[0, -1].argmax()))
        assert seq[len(prompt):] == new, "KV-cache generation differs from the full forward"
    dev.train()
    opt = train.AdamW(train.param_groups(dev, 0.0), lr=3e-3)
    first = None
    for _ in range(20):
        _, loss = dev(x.to(device), y.to(device))
        loss.backward()
        opt.step()
        opt.zero_grad()
        first = first or loss.item()
    assert loss.item() < first - 0.5, f"loss did not fall: {first} -> {loss.item()}"
    return {"fp32_loss_cpu": l_cpu.item(), "fp32_loss_device": l_dev.item(), "max_grad_diff": worst}


def check_kernels(device):
    """Each Triton kernel against its twin on the device, bf16 where training uses it."""
    import kernels
    from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy, triton_matmul,
                         triton_rmsnorm, triton_swiglu, twins)
    torch.manual_seed(0)
    bf = torch.bfloat16
    worst = {}
    for T, D, causal in ((1000, 64, True), (256, 128, False)):
        q, k, v = (torch.randn(2, 8, T, D, device=device, dtype=bf, requires_grad=True) for _ in range(3))
        o1 = triton_attention.attention(q, k, v, causal)
        o1.float().sum().backward()
        g1 = [t.grad.clone() for t in (q, k, v)]
        for t in (q, k, v):
            t.grad = None
        o2 = twins.attention(q, k, v, causal)
        o2.float().sum().backward()
        worst[f"attention T={T} D={D}"] = max((o1 - o2).abs().max().item(),
                                              *[(a - t.grad).abs().max().item() for a, t in zip(g1, (q, k, v))])
    x = torch.randn(4096, 768, device=device, dtype=bf)
    w = torch.randn(768, device=device, dtype=bf)
    worst["rms_norm"] = (triton_rmsnorm.rms_norm(x, w, 1e-5) - twins.rms_norm(x, w, 1e-5)).abs().max().item()
    worst["swiglu"] = (triton_swiglu.swiglu(x, x) - twins.swiglu(x, x)).abs().max().item()
    logits = torch.randn(512, 50304, device=device, dtype=bf)
    t = torch.randint(0, 50304, (512,), device=device)
    worst["cross_entropy"] = abs(triton_cross_entropy.cross_entropy(logits, t).item() - twins.cross_entropy(logits, t).item())
    h = torch.randn(1000, 768, device=device, dtype=bf, requires_grad=True)
    w = (torch.randn(50304, 768, device=device, dtype=bf) * 0.02).requires_grad_()
    t = torch.randint(0, 50304, (1000,), device=device)
    grads = []
    for fn in (triton_linear_cross_entropy.linear_cross_entropy, twins.linear_cross_entropy):
        loss = fn(h, w, t)
        loss.backward()
        grads.append((loss.item(), h.grad.float().clone(), w.grad.float().clone()))
        h.grad = w.grad = None
    (l1, dh1, dw1), (l2, dh2, dw2) = grads
    worst["linear_cross_entropy"] = max(abs(l1 - l2), ((dh1 - dh2).abs().max() / dh2.abs().max()).item(),
                                        ((dw1 - dw2).abs().max() / dw2.abs().max()).item())
    a, b = torch.randn(1000, 700, device=device, dtype=bf), torch.randn(700, 900, device=device, dtype=bf)
    worst["matmul"] = ((triton_matmul.matmul(a, b).float() - (a @ b).float()).abs().max() / (a @ b).float().abs().max()).item()
    bad = {name: err for name, err in worst.items() if err > 0.1}
    assert not bad, f"kernels disagree with their twins: {bad}"
    kernels.set_backend("auto")
    return worst


def time_kernels(device):
    """Each kernel against its twin and torch's best, bf16: TFLOP/s or GB/s and the ratio."""
    import torch.nn.functional as F
    from triton.testing import do_bench
    from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy, triton_matmul,
                         triton_rmsnorm, triton_swiglu, twins)
    bf, rows = torch.bfloat16, []
    big = torch.empty(1 << 28, device=device, dtype=bf)                      # 512 MB
    bandwidth = 2 * big.numel() * 2 / (do_bench(lambda: big.clone()) * 1e-3)  # read + write, bytes/s
    rows.append(("memory copy (the bandwidth the memory-bound kernels aim at)", "GB/s", bandwidth / 1e9, None, None))
    for D in (64, 128):
        for T in (1024, 2048, 4096, 8192):
            B, H = max(1, 16384 // T), 2048 // D
            q, k, v = (torch.randn(B, H, T, D, device=device, dtype=bf, requires_grad=True) for _ in range(3))
            flops = 4 * B * H * T * T * D * 0.5 * 3.5                            # causal, forward + backward (2.5x)

            def step(fn):
                o = fn(q, k, v, True)
                o.backward(torch.ones_like(o))
            ours = do_bench(lambda: step(triton_attention.attention))
            sdpa = do_bench(lambda: step(lambda a, b, c, causal: F.scaled_dot_product_attention(a, b, c, is_causal=causal)))
            rows.append((f"attention fwd+bwd D={D} T={T}", "TFLOP/s", flops / ours * 1e-9, flops / sdpa * 1e-9, sdpa / ours))
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
    logits = torch.randn(16384, 50304, device=device, dtype=bf, requires_grad=True)
    t = torch.randint(0, 50304, (16384,), device=device)
    for name, fn in (("ours", lambda: triton_cross_entropy.cross_entropy(logits, t)),
                     ("torch", lambda: F.cross_entropy(logits.float(), t))):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ms = do_bench(lambda: fn().backward())
        peak = (torch.cuda.max_memory_allocated() - base) / 1e9
        rows.append((f"cross_entropy fwd+bwd 16384x50304 ({name})", "ms | peak GB", ms, peak, None))
    # the LM head and the loss together: fused (the logits never stored) vs F.linear + F.cross_entropy
    h = torch.randn(16384, 768, device=device, dtype=bf, requires_grad=True)
    w = (torch.randn(50304, 768, device=device, dtype=bf) * 0.02).requires_grad_()
    for name, fn in (("ours, fused", lambda: triton_linear_cross_entropy.linear_cross_entropy(h, w, t)),
                     ("torch", lambda: F.cross_entropy(F.linear(h, w).float(), t))):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        ms = do_bench(lambda: fn().backward())
        peak = (torch.cuda.max_memory_allocated() - base) / 1e9
        rows.append((f"linear_cross_entropy fwd+bwd 16384x768 @ 768x50304 ({name})", "ms | peak GB", ms, peak, None))
    a, b = torch.randn(4096, 4096, device=device, dtype=bf), torch.randn(4096, 4096, device=device, dtype=bf)
    flops = 2 * 4096 ** 3
    ours, cublas = do_bench(lambda: triton_matmul.matmul(a, b)), do_bench(lambda: a @ b)
    rows.append(("matmul 4096^3", "TFLOP/s", flops / ours * 1e-9, flops / cublas * 1e-9, cublas / ours))
    return rows


def time_training(device, preset, micro_batch, steps, compile_model, dtype):
    cfg = GPTConfig(vocab_size=50304 if preset.startswith("gpt2") else 8192, **PRESETS[preset])
    is_cuda = device.type == "cuda"
    if is_cuda:
        torch.cuda.reset_peak_memory_stats()
    dt, n = step_time(cfg, micro_batch, dtype, steps, device, compile_model, warmup=2)
    tokens = micro_batch * cfg.block_size
    peak = train.peak_flops(device, dtype)
    achieved = tokens / dt * flops_per_token(cfg, n)
    return {"preset": preset, "params": n, "dtype": dtype, "compiled": compile_model,
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
    info["checks"] = check(device)
    if device.type == "cuda":
        info["kernel_checks"] = check_kernels(device)
    print(f"checks passed on {info['device']} ({time.time() - t0:.0f} s)")
    if device.type == "cuda":
        info["kernels"] = time_kernels(device)
        print("\n| kernel | unit | ours | torch's best | ratio ours/torch |")
        print("|---|---|---:|---:|---:|")
        for name, unit, ours, best, ratio in info["kernels"]:
            fmt = lambda x: "-" if x is None else f"{x:,.2f}"  # noqa: E731
            print(f"| {name} | {unit} | {fmt(ours)} | {fmt(best)} | {fmt(ratio)} |")
    dtype = "bf16" if device.type == "cuda" else "fp32"
    runs = [time_training(device, args.preset, args.micro_batch, args.steps, False, dtype)]
    if not args.no_compile:
        runs.append(time_training(device, args.preset, args.micro_batch, args.steps, True, dtype))
    info["training"] = runs
    print("\n| preset | params | dtype | compiled | tokens/s | model TFLOP/s | MFU | memory GB |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for r in runs:
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        mem = f"{r['max_memory_gb']:.1f}" if r["max_memory_gb"] is not None else "-"
        print(f"| {r['preset']} | {r['params'] / 1e6:.0f}M | {r['dtype']} | {r['compiled']} | "
              f"{r['tokens_per_s']:,.0f} | {r['model_tflops']:.1f} | {mfu} | {mem} |")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gpu.json").write_text(json.dumps(info, indent=2))
    print(f"\n{time.time() - t0:.0f} s in all; results in {Path(args.out) / 'gpu.json'}")


if __name__ == "__main__":
    main()
