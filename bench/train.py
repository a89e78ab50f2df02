"""Benchmark of a training step on this machine's CPU: tokens/s and MFU for the `tiny` and
`small` presets, fp32 and bf16 autocast.

MFU (model FLOPs utilisation, Chowdhery et al. 2022) = achieved model FLOP/s / peak FLOP/s,
where achieved = tokens/s x FLOPs per token (6N + attention, model.flops_per_token). On a CPU
no datasheet figure fits, so the peak is what torch's own matmul reaches here on large
square matrices in the same precision, measured in the same run: the ratio says how close a whole training step
(attention, norms, the loss, the optimizer) comes to the best case of its main operation.

Run:
    python bench/train.py                    # tiny and small, fp32 and bf16, median of 3 steps
    python bench/train.py --presets tiny --steps 5
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import train  # noqa: E402
import training  # noqa: E402
from model import GPT, PRESETS, GPTConfig, flops_per_token  # noqa: E402


def step_time(cfg, micro_batch, dtype, steps, device="cpu", compile_model=False, warmup=1):
    """Median seconds of one optimizer step on random tokens, after `warmup` untimed steps
    (where torch.compile compiles). The step is train.py's own, train.train_step (forward,
    backward, clip, AdamW), so this times what training runs. Also used by bench/gpu.py."""
    torch.manual_seed(0)
    model = GPT(cfg).to(device)
    rt = training.Runtime(str(device))
    run = training.wrap(model, rt, compile=compile_model)
    opt = training.AdamW(training.param_groups(model, 0.1), lr=1e-3)
    ctx = training.autocast(device, dtype)
    is_cuda = torch.device(device).type == "cuda"
    x = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.block_size), device=device)
    y = torch.randint(0, cfg.vocab_size, (micro_batch, cfg.block_size), device=device)
    times = []
    for i in range(steps + warmup):
        if is_cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train.train_step(run, opt, [(x, y)], ctx, 1.0, rt)
        if is_cuda:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times), sum(p.numel() for p in model.parameters())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", nargs="+", default=["tiny", "small"], help="model sizes")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], help="autocast precisions")
    p.add_argument("--vocab-size", type=int, default=8192, help="vocabulary (bpe.py's default)")
    p.add_argument("--micro-batch", type=int, default=8, help="sequences per step")
    p.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    args = p.parse_args()

    peaks = {d: training.matmul_flops(d, n=2048, reps=5) for d in args.dtypes}
    print(f"\nTraining step on the CPU ({torch.get_num_threads()} threads), median of {args.steps} steps; "
          f"peak = a 2048^3 matmul in the same precision, measured now\n")
    print("| preset | params | dtype | tokens/step | step s | tokens/s | model GFLOP/s | matmul peak GFLOP/s | MFU |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for name in args.presets:
        cfg = GPTConfig(vocab_size=args.vocab_size, **PRESETS[name])
        for dtype in args.dtypes:
            dt, n = step_time(cfg, args.micro_batch, dtype, args.steps)
            tokens = args.micro_batch * cfg.block_size
            achieved = tokens / dt * flops_per_token(cfg, n)
            print(f"| {name} | {n / 1e6:.1f}M | {dtype} | {tokens:,} | {dt:.2f} | {tokens / dt:,.0f} | "
                  f"{achieved / 1e9:.1f} | {peaks[dtype] / 1e9:.1f} | {achieved / peaks[dtype]:.2f} |")


if __name__ == "__main__":
    main()
