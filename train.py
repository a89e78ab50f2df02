"""Stage 3: pretrain the GPT on the token shards: next-token prediction, our own AdamW.

    for step s:
      1. lr(s): linear warm-up, then cosine decay to a floor
      2. for each micro-batch i of the step (this process's share): forward, loss / n, backward
         (micro-batch i of step s is a pure function of (seed, s, i): the same batches whatever
         the number of processes, and a resumed run sees exactly what it would have seen)
      3. clip the gradients' global norm; 4. AdamW step
      5. every --eval-every steps: validation loss and bits per byte, a few samples
      6. every --ckpt-every steps and at the end: checkpoint (atomic), log, plots

Reads:  out/tok/train.bin, val.bin, tokenizer.json, meta.json (bpe.py)
Writes: out/pretrain/model.pt, tokenizer.json, meta.json     (the checkpoint every stage loads)
        out/pretrain/train_state.pt  (weights, optimizer, step, RNG: what --resume needs)
        out/pretrain/log.jsonl, loss.png, lr.png

Run:
    python train.py                                       # tiny preset, CPU, a few minutes
    python train.py --resume                              # continue a killed run, bit for bit
    torchrun --standalone --nproc_per_node=8 train.py --preset gpt2 --batch-tokens 524288
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 train.py --preset gpt2    # and node_rank=1 on the other node

References: Kingma & Ba 2015 (Adam); Loshchilov & Hutter 2019 (decoupled weight decay, cosine
schedule); Kaplan et al. 2020 (6N FLOPs per token); Chowdhery et al. 2022 (MFU); nanoGPT.

Not included: dropout (we train far less than one epoch), mixed-precision loss scaling (bf16
needs none), ZeRO/FSDP sharding, gradient checkpointing.
"""

import argparse
import json
import math
import os
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import kernels
from common import StageError, atomic_open, hash_inputs, pick_device, run_main, save_figure, write_meta
from model import PRESETS, GPT, GPTConfig, bits_per_byte, flops_per_token, save_checkpoint
from tokenizer import load_token_dir

FORMAT, VERSION = "checkpoint", 1


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # data and output
    p.add_argument("--data-dir", default="out/tok", help="bpe.py output: shards and tokenizer")
    p.add_argument("--out-dir", default="out/pretrain", help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue from --out-dir/train_state.pt")
    # model
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size")
    p.add_argument("--block-size", type=int, default=0, help="context length; 0 = the preset's")
    # batch and schedule (the defaults are the tiny CPU run of run.sh: 1.3M tokens in ~5.5 minutes)
    p.add_argument("--batch-tokens", type=int, default=8192, help="tokens per optimizer step, all processes together")
    p.add_argument("--micro-batch", type=int, default=16, help="sequences per forward pass per process")
    p.add_argument("--max-steps", type=int, default=160, help="optimizer steps")
    p.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (1e-2 beat 5e-3 and 2e-2 on the tiny run)")
    p.add_argument("--min-lr-frac", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    p.add_argument("--warmup-steps", type=int, default=20, help="linear warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.1, help="decoupled weight decay (matrices only)")
    p.add_argument("--beta1", type=float, default=0.9, help="AdamW beta1")
    p.add_argument("--beta2", type=float, default=0.95, help="AdamW beta2")
    p.add_argument("--grad-clip", type=float, default=1.0, help="global gradient norm limit; 0 = off")
    # evaluation, logging, checkpoints
    p.add_argument("--eval-every", type=int, default=40, help="steps between validation runs; 0 = only at the end")
    p.add_argument("--eval-batches", type=int, default=8, help="micro-batches of validation per run")
    p.add_argument("--ckpt-every", type=int, default=40, help="steps between checkpoints; 0 = only at the end")
    p.add_argument("--samples", type=int, default=2, help="samples printed at each validation; 0 = none")
    # system
    p.add_argument("--device", default="auto", help="cuda, mps or cpu; auto picks in that order")
    p.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto",
                   help="autocast precision: auto = bf16 on CUDA, fp32 elsewhere")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto",
                   help="fused Triton kernels or their PyTorch twins; auto = Triton on CUDA only")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process; 0 = torch's default")
    p.add_argument("--seed", type=int, default=1337, help="initialisation and data order")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- the maths

class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), written out.

        m = b1 m + (1 - b1) g                  first moment (momentum)
        v = b2 v + (1 - b2) g^2                second moment (per-weight scale)
        m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)      bias correction: m, v start at 0
        w = w - lr wd w                        decay, not part of the gradient ("decoupled")
        w = w - lr m_hat / (sqrt(v_hat) + eps)

    `groups` is a list of (params, weight_decay). Norm weights and embeddings get no decay:
    pulling a norm's gain or a rare token's embedding to zero is not regularisation.
    """

    def __init__(self, groups, lr, betas=(0.9, 0.95), eps=1e-8):
        self.groups = [(list(params), wd) for params, wd in groups]
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m = [torch.zeros_like(p) for params, _ in self.groups for p in params]
        self.v = [torch.zeros_like(p) for params, _ in self.groups for p in params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1 ** self.t, 1 - b2 ** self.t
        k = 0
        for params, wd in self.groups:
            for p in params:
                m, v = self.m[k], self.v[k]
                k += 1
                if p.grad is None:
                    continue
                g = p.grad
                p.mul_(1 - self.lr * wd)
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = (v.sqrt() / math.sqrt(c2)).add_(self.eps)
                p.addcdiv_(m, denom, value=-self.lr / c1)

    def zero_grad(self):
        for params, _ in self.groups:
            for p in params:
                p.grad = None

    def state_dict(self):
        return {"t": self.t, "m": self.m, "v": self.v}

    def load_state_dict(self, state):
        self.t = int(state["t"])
        for dst, src in zip(self.m + self.v, state["m"] + state["v"]):
            dst.copy_(src)


def param_groups(model, weight_decay):
    """Matrices of the linear layers decay; embeddings (and the tied LM head) and norms do not."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():          # a tied weight appears once
        (decay if p.dim() >= 2 and "tok_emb" not in name else no_decay).append(p)
    return [(decay, weight_decay), (no_decay, 0.0)]


@torch.no_grad()
def clip_grad_norm(params, max_norm):
    """Scale all gradients by max_norm / ||g|| when their global L2 norm ||g|| exceeds it.
    Returns ||g|| before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)
    if max_norm > 0:
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale)
    return total


def lr_at(step, max_lr, warmup, max_steps, min_frac):
    """Linear warm-up over `warmup` steps, then cosine decay to min_frac * max_lr at max_steps."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min((step - warmup) / max(1, max_steps - warmup), 1.0)
    min_lr = max_lr * min_frac
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


def get_batch(data, seed, step, index, batch, block):
    """Micro-batch `index` of step `step`: `batch` random windows of block + 1 tokens.

    A pure function of (seed, step, index), so any process, in any run, resumed or not,
    draws the same windows for the same micro-batch.
    """
    rng = np.random.default_rng([seed, step, index])
    starts = rng.integers(0, len(data) - block, size=batch)
    windows = np.stack([data[s:s + block + 1] for s in starts]).astype(np.int64)
    w = torch.from_numpy(windows)
    return w[:, :-1], w[:, 1:]                      # inputs, targets shifted by one: (B, T)


# ----------------------------------------------------------------------------- set-up

def setup_device(args):
    """(device, rank, world size, local rank), initialising DDP when launched by torchrun."""
    ddp = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    args.device = pick_device(args.device)
    rank, world, local = 0, 1, 0
    if ddp:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", 0))
        if args.device == "cuda":
            torch.cuda.set_device(local)
            device = f"cuda:{local}"
        else:
            device = args.device
        dist.init_process_group(backend="nccl" if args.device == "cuda" else "gloo")
    else:
        device = args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    return device, rank, world, local


def peak_flops(device, dtype="fp32"):
    """The device's peak FLOP/s for MFU: the datasheet dense bf16 rate on known GPUs, a
    measured matmul rate in the training precision on the CPU (no datasheet number fits an
    arbitrary CPU)."""
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for key, flops in (("H100", 989e12), ("H200", 989e12), ("A100", 312e12), ("L4", 121e12),
                           ("A10", 125e12), ("4090", 165e12)):
            if key in name:
                return flops
        return None
    return matmul_flops(dtype, n=1024, reps=10)


def matmul_flops(dtype, n, reps):
    """FLOP/s of an n x n matmul on the CPU in `dtype` (median of reps after a warm-up)."""
    a = torch.randn(n, n, dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    b = torch.randn_like(a)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / float(np.median(times))


def rng_state():
    """Every RNG the run uses, as tensors (the data order needs none: it is a function of the
    step). Samples use their own generator, seeded per step, so they never disturb these."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


@torch.no_grad()
def evaluate(model, val, args, block, byte_lengths, ctx, device):
    """Validation loss (per token) and bits per byte over fixed validation micro-batches."""
    model.eval()
    losses, nats, nbytes = [], 0.0, 0
    for j in range(args.eval_batches):
        x, y = get_batch(val, args.seed, 2**31, j, args.micro_batch, block)   # step 2^31: never a training step
        x, y = x.to(device), y.to(device)
        with ctx:
            logits, loss = model(x, y)
        losses.append(loss.item())
        n, b = bits_per_byte(logits, y, byte_lengths)
        nats, nbytes = nats + n, nbytes + b
    model.train()
    return float(np.mean(losses)), nats / (math.log(2) * max(nbytes, 1))


def sample_texts(model, tokenizer, n, step, seed, device):
    prompts = ["The", "def ", "In the year", "KING"][:n]
    gen = torch.Generator(device=device).manual_seed(seed + step)
    ids = [tokenizer.encode_document(p) for p in prompts]
    model.eval()
    out = model.generate(ids, 40, temperature=0.8, top_k=50, stop_tokens={tokenizer.special("<|endoftext|>")},
                         generator=gen)
    model.train()
    return [p + tokenizer.decode([t for t in o if not tokenizer.is_special(t)]) for p, o in zip(prompts, out)]


def plot_curves(out_dir, log):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    train = [r for r in log if "loss" in r]
    val = [r for r in log if "val_loss" in r]
    for name, series in (("loss", [("train", train, "loss"), ("validation", val, "val_loss")]),
                         ("lr", [("learning rate", train, "lr")])):
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, rows, key in series:
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=label,
                        marker="o" if label == "validation" else None)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, Path(out_dir) / f"{name}.png")


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    device, rank, world, local = setup_device(args)
    try:
        kernels.set_backend(args.kernels)
    except RuntimeError as e:
        raise StageError(str(e)) from None
    master = rank == 0
    out = Path(args.out_dir)
    dtype = args.dtype if args.dtype != "auto" else ("bf16" if str(device).startswith("cuda") else "fp32")
    device_type = "cuda" if str(device).startswith("cuda") else "cpu"
    ctx = torch.autocast(device_type, dtype=torch.bfloat16) if dtype == "bf16" else nullcontext()

    # 1. data, tokenizer and the model's shape
    tokenizer, tok_meta = load_token_dir(args.data_dir)
    shard_dtype = np.dtype(tok_meta["dtype"])
    train = np.memmap(Path(args.data_dir) / "train.bin", dtype=shard_dtype, mode="r")
    val = np.memmap(Path(args.data_dir) / "val.bin", dtype=shard_dtype, mode="r")
    preset = dict(PRESETS[args.preset])
    if args.block_size:
        preset["block_size"] = args.block_size
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, **preset)
    block = cfg.block_size
    for name, data in (("train", train), ("val", val)):
        if len(data) <= block + 1:
            raise StageError(f"{name}.bin holds {len(data)} tokens, not more than the block size "
                             f"{block} + 1; use a smaller --block-size or more data")
    tokens_per_micro = args.micro_batch * block
    n_micro, rem = divmod(args.batch_tokens, tokens_per_micro)
    if rem or n_micro == 0 or n_micro % world:
        raise StageError(f"--batch-tokens {args.batch_tokens} is not a whole number of micro-batches "
                         f"({args.micro_batch} x {block} = {tokens_per_micro} tokens) split evenly over "
                         f"{world} process(es); change --batch-tokens or --micro-batch")
    n_local = n_micro // world

    # 2. model and optimizer, or the state of a killed run
    torch.manual_seed(args.seed)
    raw = GPT(cfg).to(device)
    opt = AdamW(param_groups(raw, args.weight_decay), args.lr, (args.beta1, args.beta2))
    step, log = 0, []
    if args.resume:
        step, log = resume(out, raw, opt, tokenizer, cfg)
    model = raw
    if args.compile:
        model = torch.compile(model)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local] if device_type == "cuda" else None)

    n_params = raw.num_params()
    fpt = flops_per_token(cfg, n_params)
    peak = peak_flops(device, dtype) if master else None
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.long)
    tok_path = Path(args.data_dir) / "tokenizer.json"
    if master:
        out.mkdir(parents=True, exist_ok=True)
        print(f"model: {args.preset}, {n_params / 1e6:.2f}M parameters, {fpt / 1e6:.1f} MFLOP/token; "
              f"{world} process(es) x {n_local} micro-batch(es) of {args.micro_batch} x {block} = "
              f"{args.batch_tokens:,} tokens/step; {dtype} on {device}")
    inputs = hash_inputs({"tokenizer": tok_path, "train.bin": Path(args.data_dir) / "train.bin"}) if master else {}
    tok_record = {"sha256": tokenizer.sha256(), "vocab_size": tokenizer.vocab_size,
                  "special_tokens": tokenizer.special_tokens}

    def checkpoint(metrics):
        """train_state.pt first (self-contained: weights too), then the published model."""
        with atomic_open(out / "train_state.pt", "wb") as f:
            torch.save({"step": step, "model": raw.state_dict(), "optimizer": opt.state_dict(),
                        "rng": rng_state(), "tokenizer_sha256": tok_record["sha256"]}, f)
        save_checkpoint(out, raw, tok_path)
        write_meta(out, FORMAT, VERSION, "train.py", vars(args), metrics, inputs=inputs,
                   config=cfg.__dict__, tokenizer=tok_record)
        with atomic_open(out / "log.jsonl") as f:
            f.writelines(json.dumps(r) + "\n" for r in log)
        plot_curves(out, log)

    # 3. the loop
    last = {}
    bar = tqdm(total=args.max_steps, initial=step, desc="train", unit="step", disable=not master, mininterval=1)
    t_last, tokens_since = time.perf_counter(), 0
    while step < args.max_steps:
        lr = lr_at(step, args.lr, args.warmup_steps, args.max_steps, args.min_lr_frac)
        opt.lr = lr
        loss_sum = 0.0
        for j in range(n_local):
            i = rank + j * world                       # this process's micro-batches of the step
            x, y = get_batch(train, args.seed, step, i, args.micro_batch, block)
            x, y = x.to(device), y.to(device)
            sync = j == n_local - 1 or world == 1
            with (nullcontext() if sync else model.no_sync()), ctx:
                _, loss = model(x, y, return_logits=False)      # the fused LM head + loss
            (loss / n_local).backward()                # DDP then averages over processes
            loss_sum += loss.item()
        norm = clip_grad_norm(raw.parameters(), args.grad_clip)
        loss_avg = loss_sum / n_local
        if world > 1:
            t = torch.tensor([loss_avg], device=device)
            dist.all_reduce(t)
            loss_avg = t.item() / world
        if not math.isfinite(loss_avg) or not torch.isfinite(norm):
            where = f"the last good checkpoint is in {out}" if (out / "train_state.pt").exists() else "no checkpoint was written"
            bar.close()
            raise StageError(f"the loss became {loss_avg} at step {step}; {where}; lower --lr or check the data")
        opt.step()
        opt.zero_grad()
        step += 1
        tokens_since += args.batch_tokens
        if master:
            dt = time.perf_counter() - t_last
            tps = tokens_since / dt
            last = {"step": step, "loss": round(loss_avg, 5), "lr": lr, "grad_norm": round(norm.item(), 4),
                    "tokens_per_s": round(tps), "mfu": round(tps * fpt / peak, 4) if peak else None}
            log.append(last)
            t_last, tokens_since = time.perf_counter(), 0
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.3f}", tok_s=f"{tps:,.0f}")
        evaluate_now = step == args.max_steps or (args.eval_every and step % args.eval_every == 0)
        if evaluate_now and master:
            vloss, vbpb = evaluate(raw, val, args, block, byte_lengths, ctx, device)
            samples = sample_texts(raw, tokenizer, args.samples, step, args.seed, device) if args.samples else []
            log.append({"step": step, "val_loss": round(vloss, 5), "val_bpb": round(vbpb, 5), "samples": samples})
            tqdm.write(f"step {step}: train loss {loss_avg:.3f}, val loss {vloss:.3f}, val bpb {vbpb:.3f}")
            for s in samples:
                tqdm.write(f"  | {s!r}")
            t_last = time.perf_counter()              # evaluation is not training time
        ckpt_now = step == args.max_steps or (args.ckpt_every and step % args.ckpt_every == 0)
        if ckpt_now and master:
            checkpoint(summary(log, step, args, n_params, fpt))
            t_last = time.perf_counter()
    bar.close()
    if master and log:
        m = summary(log, step, args, n_params, fpt)
        print(f"done: step {step}, val loss {m.get('val_loss')}, val bpb {m.get('val_bpb')} -> {out}")
    if world > 1:
        dist.destroy_process_group()


def summary(log, step, args, n_params, fpt):
    """The metrics meta.json carries: the latest values, the validation history, totals."""
    vals = [r for r in log if "val_loss" in r]
    trains = [r for r in log if "loss" in r]
    tokens = step * args.batch_tokens
    m = {"step": step, "params": n_params, "flops_per_token": fpt, "tokens": tokens,
         "flops": tokens * fpt, "train_loss": trains[-1]["loss"] if trains else None,
         "val_history": [{"step": r["step"], "val_loss": r["val_loss"], "val_bpb": r["val_bpb"]} for r in vals]}
    if vals:
        m.update(val_loss=vals[-1]["val_loss"], val_bpb=vals[-1]["val_bpb"])
    if trains:
        m["tokens_per_s"] = float(np.median([r["tokens_per_s"] for r in trains[-20:]]))
        mfus = [r["mfu"] for r in trains[-20:] if r["mfu"] is not None]
        m["mfu"] = float(np.median(mfus)) if mfus else None
    return m


def resume(out, model, opt, tokenizer, cfg):
    """Restore weights, optimizer, step and RNG from out/train_state.pt; returns (step, log)."""
    path = out / "train_state.pt"
    if not path.exists():
        raise StageError(f"--resume: no {path}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise StageError(f"{path} is not a readable training state ({type(e).__name__}); it may "
                         f"be truncated: start again without --resume") from None
    if state.get("tokenizer_sha256") != tokenizer.sha256():
        raise StageError(f"{path} was trained with another tokenizer than the one in --data-dir; "
                         f"resume with the same data or start again")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        raise StageError(f"{path} holds a model of another shape or vocabulary than --preset and "
                         f"the tokenizer give ({cfg.vocab_size} ids); use the same flags") from None
    opt.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"]["torch"])
    if "cuda" in state["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    step = int(state["step"])
    log = []
    if (out / "log.jsonl").exists():
        log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
        log = [r for r in log if r["step"] <= step]
    print(f"resumed at step {step}")
    return step, log


if __name__ == "__main__":
    run_main(main)
