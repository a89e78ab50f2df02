"""Stage 3: pretrain the GPT on the token shards: next-token prediction, our own AdamW.

    for step s:
      1. lr(s): linear warm-up, then cosine decay to a floor
      2. for each micro-batch i of the step (this process's share): forward, loss / n, backward
         (micro-batch i of step s is a pure function of (seed, s, i): the same batches whatever
         the number of processes, and a resumed run sees exactly what it would have seen)
      3. clip the gradients' global norm; 4. AdamW step (skipped, and the run stopped, if the
         loss or the norm is not finite)
      5. every --eval-every steps: validation loss and bits per byte, a few samples
      6. every --ckpt-every steps and at the end: checkpoint (atomic), log, plots

The optimizer, the schedule, clipping, DDP/FSDP, the autocast policy, the training state and
the log are the training engine's (training.py), shared with every later training stage.

Reads:  out/tok/train.bin, val.bin, tokenizer.json, meta.json (bpe.py)
Writes: out/pretrain/model.pt, tokenizer.json, meta.json (kind "base": the checkpoint every
        stage loads), train_state.pt (weights, optimizer, step, RNG: what --resume needs),
        log.jsonl, loss.png, lr.png

Run:
    python train.py                                       # tiny preset, 2 CPU cores, 5.5-7 minutes
    python train.py --resume                              # continue a killed run, bit for bit
    torchrun --standalone --nproc_per_node=8 train.py --preset gpt2 --batch-tokens 524288
    torchrun --standalone --nproc_per_node=8 train.py --preset gpt2-large --fsdp   # sharded
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=8 --rdzv_backend=c10d \\
        --rdzv_endpoint=HOST:29500 train.py --preset gpt2    # and node_rank=1 on the other node

References: Kaplan et al. 2020 (6N FLOPs per token); Chowdhery et al. 2022 (MFU); nanoGPT;
the optimizer's and the schedule's in training.py.

Not included: dropout (we train far less than one epoch), mixed-precision loss scaling (bf16
needs none), gradient checkpointing.
"""

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import kernels
import training
from common import StageError, check_flags, check_same_run, hash_inputs, run_main, check_out_dir
from model import FLOPS_FORMULA, PRESETS, GPT, GPTConfig, bits_per_byte, flops_per_token, next_token_loss, save_checkpoint
from tokenizer import load_token_dir

CURVES = {"loss": [("train", "loss"), ("validation", "val_loss")], "lr": [("learning rate", "lr")]}
# The flags that define a run: --resume continues only a run started with the same ones.
RUN_FLAGS = ("preset", "block_size", "batch_tokens", "max_steps", "lr", "min_lr_frac", "warmup_steps",
             "weight_decay", "beta1", "beta2", "grad_clip", "seed")


def parse_args(argv=None):
    p = training.ArgumentParser(description=__doc__.split("\n\n")[0])
    # data and output
    p.add_argument("--data-dir", default="out/tok", help="bpe.py output: shards and tokenizer")
    p.add_argument("--out-dir", default="out/pretrain", help="checkpoint directory")
    p.add_argument("--resume", action="store_true", help="continue from --out-dir/train_state.pt")
    p.add_argument("--stop-after", type=int, default=0,
                   help="end this run after step N with a checkpoint, on --max-steps' schedule, to continue "
                        "with --resume (a time-limited or preemptible job); 0 = run to --max-steps")
    # model
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size")
    p.add_argument("--block-size", type=int, default=0, help="context length; 0 = the preset's")
    # batch and schedule (the defaults are the tiny CPU run of run.sh: 1.3M tokens in 5.5-7 minutes)
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
    p.add_argument("--fsdp", action="store_true",
                   help="shard weights, gradients and optimizer state over the torchrun processes "
                        "(FSDP2) instead of DDP's full copy per process")
    p.add_argument("--kernels", choices=["auto", "torch", "triton"], default="auto",
                   help="fused Triton kernels or their PyTorch twins; auto = Triton on CUDA only")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process; 0 = torch's default")
    p.add_argument("--seed", type=int, default=1337, help="initialisation and data order")
    args = p.parse_args(argv)
    check_flags(p, args, {**dict.fromkeys(("max_steps", "batch_tokens", "micro_batch", "eval_batches"), 1),
                          **dict.fromkeys(("stop_after", "eval_every", "ckpt_every", "samples", "warmup_steps",
                                           "block_size", "threads"), 0)},
                positive=("lr",), nonnegative=("min_lr_frac", "weight_decay", "grad_clip"))
    if not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1):
        p.error("--beta1 and --beta2 must lie in [0, 1)")
    # what depends on the number of processes (torchrun's WORLD_SIZE), checked before any
    # process group starts
    world = int(os.environ.get("WORLD_SIZE", 1))
    if args.fsdp and world == 1:
        p.error("--fsdp shards the model over processes: launch it with torchrun --nproc_per_node=N (N >= 2)")
    try:
        micro_batches_per_process(args.batch_tokens, args.micro_batch,
                                  args.block_size or PRESETS[args.preset]["block_size"], world)
    except StageError as e:
        p.error(str(e))
    return args


# ----------------------------------------------------------------------------- the data

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


def micro_batches_per_process(batch_tokens, micro_batch, block, world):
    """How many micro-batches each process runs per step, so that the step sees batch_tokens
    tokens whatever the number of processes."""
    tokens_per_micro = micro_batch * block
    n_micro, rem = divmod(batch_tokens, tokens_per_micro)
    if rem or n_micro == 0 or n_micro % world:
        raise StageError(f"--batch-tokens {batch_tokens} is not a whole number of micro-batches "
                         f"({micro_batch} x {block} = {tokens_per_micro} tokens) split evenly over "
                         f"{world} process(es); change --batch-tokens or --micro-batch")
    return n_micro // world


# ----------------------------------------------------------------------------- the step

def train_step(model, opt, micro_batches, ctx, grad_clip, rt):
    """One optimizer step over this process's micro-batches [(x, y), ...] (steps 2-4).

    Each micro-batch's loss is divided by their number before backward, so the accumulated
    gradient is the mean over the micro-batches; DDP/FSDP then average it over the processes,
    once, after the last one (training.grad_sync). Returns (loss averaged over micro-batches
    and processes, gradient norm before clipping). If either is not finite the optimizer does
    not step: the caller stops (training.stop_if_not_finite)."""
    n = len(micro_batches)
    loss_sum = 0.0
    for j, (x, y) in enumerate(micro_batches):
        with training.grad_sync(model, sync=j == n - 1), ctx:
            loss = model(x, y)                         # the fused LM head + loss: no logits stored
        (loss / n).backward()
        loss_sum += loss.item()
    norm = training.clip_grad_norm(model.parameters(), grad_clip)
    loss = training.mean_over_processes(loss_sum / n, rt)
    if math.isfinite(loss) and torch.isfinite(norm):
        opt.step()
    opt.zero_grad()
    return loss, norm


@torch.no_grad()
def estimate_val_loss(model, val, seed, micro_batch, block, n_batches, byte_lengths, ctx, device):
    """Validation loss (per token) and bits per byte over fixed validation micro-batches."""
    model.eval()
    losses, nats, nbytes = [], 0.0, 0
    for j in range(n_batches):
        x, y = get_batch(val, seed, 2**31, j, micro_batch, block)   # step 2^31: never a training step
        x, y = x.to(device), y.to(device)
        with ctx:
            logits = model(x)
            loss = next_token_loss(logits, y)
        losses.append(loss.item())
        n, b = bits_per_byte(logits, y, byte_lengths)
        nats, nbytes = nats + n, nbytes + b
    model.train()
    return float(np.mean(losses)), nats / (math.log(2) * max(nbytes, 1))


def sample_texts(model, tokenizer, n, step, seed, device):
    """A few continuations of fixed prompts, each a document start, sampled with a generator
    seeded by the step (so they never disturb the training RNG)."""
    prompts = ["The", "def ", "In the year", "KING"][:n]
    gen = torch.Generator(device=device).manual_seed(seed + step)
    ids = [tokenizer.encode_document(p) for p in prompts]
    new_tokens = min(40, model.config.block_size - max(map(len, ids)))     # a short --block-size fits fewer
    model.eval()
    out = model.generate(ids, new_tokens, temperature=0.8, top_k=50, stop_tokens={tokenizer.special("<|endoftext|>")},
                         generator=gen)
    model.train()
    return [p + tokenizer.decode([t for t in o if not tokenizer.is_special(t)]) for p, o in zip(prompts, out)]


def summary(log, step, batch_tokens, n_params, fpt):
    """The metrics meta.json carries: the latest values, the validation history, totals."""
    vals = [r for r in log if "val_loss" in r]
    trains = [r for r in log if "loss" in r]
    tokens = step * batch_tokens
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


# ----------------------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    rt = training.setup_runtime(args.device, args.threads)
    try:
        kernels.set_backend(args.kernels)
    except RuntimeError as e:
        raise StageError(str(e)) from None
    out = check_out_dir(args.out_dir, sweep=rt.master)   # and what a run killed mid-write left behind
    dtype = training.resolve_dtype(args.dtype, rt.device)
    ctx = training.autocast(rt.device, dtype)

    # set-up: data, tokenizer and the model's shape
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
    n_local = micro_batches_per_process(args.batch_tokens, args.micro_batch, block, rt.world)

    # set-up: model and optimizer (built after wrapping: FSDP replaces the parameters by
    # shards), or the state of a killed run
    torch.manual_seed(args.seed)
    raw = GPT(cfg).to(rt.device)
    n_params = raw.num_params()
    model = training.wrap(raw, rt, compile=args.compile, fsdp=args.fsdp)
    opt = training.AdamW(training.param_groups(raw, args.weight_decay), args.lr, (args.beta1, args.beta2))
    fpt = flops_per_token(cfg, n_params)
    accounting = training.Accounting(rt, fpt, FLOPS_FORMULA)
    step, log = 0, []
    if args.resume:
        step, extra = training.load_train_state(out / "train_state.pt", {"model": raw}, {"adamw": opt},
                                                tokenizer.sha256())
        check_same_run(extra.get("run_flags", {}), args, RUN_FLAGS)
        accounting.load_state_dict(extra["accounting"])
        log = list(extra["log"])                   # the log travels in the state: no kill can lose rows
        if rt.master:
            print(f"resumed at step {step}")
    peak = training.peak_flops(rt.device, dtype) if rt.master else None
    byte_lengths = torch.tensor(tokenizer.token_byte_lengths(), dtype=torch.long)
    evaluates = rt.master or args.fsdp          # a sharded model needs every process to run it
    if rt.master:
        out.mkdir(parents=True, exist_ok=True)
        print(f"model: {args.preset}, {n_params / 1e6:.2f}M parameters, {fpt / 1e6:.1f} MFLOP/token; "
              f"{rt.world} process(es) x {n_local} micro-batch(es) of {args.micro_batch} x {block} = "
              f"{args.batch_tokens:,} tokens/step; {dtype} on {rt.device}{' (FSDP)' if args.fsdp else ''}")
    tok_path = Path(args.data_dir) / "tokenizer.json"
    inputs = hash_inputs({"tokenizer": tok_path, "train.bin": Path(args.data_dir) / "train.bin"}) if rt.master else {}

    end_step = min(args.stop_after, args.max_steps) if args.stop_after else args.max_steps
    # the loop, steps numbered as in the docstring (the bar closes even when a step raises)
    with tqdm(total=args.max_steps, initial=step, desc="train", unit="step", disable=not rt.master,
              mininterval=1) as bar:
        t_last, tokens_since = time.perf_counter(), 0
        while step < end_step:
            # 1. the learning rate of this step
            lr = training.lr_at(step, args.lr, args.warmup_steps, args.max_steps, args.min_lr_frac)
            opt.lr = lr
            # 2.-4. this process's micro-batches i = rank, rank + world, ...: forward, backward, clip, AdamW
            batches = [get_batch(train, args.seed, step, rt.rank + j * rt.world, args.micro_batch, block)
                       for j in range(n_local)]
            batches = [(x.to(rt.device), y.to(rt.device)) for x, y in batches]
            loss, norm = train_step(model, opt, batches, ctx, args.grad_clip, rt)
            training.stop_if_not_finite(loss, norm, step, out)
            step += 1
            tokens_since += args.batch_tokens
            accounting.add_tokens(args.batch_tokens)
            if rt.master:
                tps = tokens_since / (time.perf_counter() - t_last)
                log.append({"step": step, "loss": round(loss, 5), "lr": lr, "grad_norm": round(norm.item(), 4),
                            "tokens_per_s": round(tps), "mfu": round(tps * fpt / peak, 4) if peak else None})
                t_last, tokens_since = time.perf_counter(), 0
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tps:,.0f}")

            # 5. every --eval-every steps and at the end: validation and samples
            if (step == args.max_steps or (args.eval_every and step % args.eval_every == 0)) and evaluates:
                vloss, vbpb = estimate_val_loss(raw, val, args.seed, args.micro_batch, block, args.eval_batches,
                                                byte_lengths, ctx, rt.device)
                samples = sample_texts(raw, tokenizer, args.samples, step, args.seed, rt.device) if args.samples else []
                if rt.master:
                    log.append({"step": step, "val_loss": round(vloss, 5), "val_bpb": round(vbpb, 5), "samples": samples})
                    tqdm.write(f"step {step}: train loss {loss:.3f}, val loss {vloss:.3f}, val bpb {vbpb:.3f}")
                    for s in samples:
                        tqdm.write(f"  | {s!r}")
                t_last = time.perf_counter()              # evaluation is not training time

            # 6. every --ckpt-every steps and at the end: the training state first (self-contained:
            #    weights, optimizer, RNG, log), then the published checkpoint, the log and the curves;
            #    meta.json holds model.pt's hash, so a kill between them cannot pair the wrong two
            if step == end_step or (args.ckpt_every and step % args.ckpt_every == 0):
                extra = {"accounting": accounting.state_dict(), "log": log,
                         "run_flags": {k: getattr(args, k) for k in RUN_FLAGS}}
                # every process: under FSDP the shards are gathered, once for both files
                states = training.save_train_state(out / "train_state.pt", step, {"model": raw}, {"adamw": opt},
                                                   tokenizer.sha256(), extra=extra, master=rt.master)
                if rt.master:
                    save_checkpoint(out, states["model"], cfg, tokenizer, kind="base", script="train.py", args=vars(args),
                                    metrics=summary(log, step, args.batch_tokens, n_params, fpt), inputs=inputs,
                                    accounting=accounting.record())
                    training.write_log(out, log)
                    training.plot_curves(out, log, CURVES)
                t_last = time.perf_counter()
    if rt.master and log:
        m = summary(log, step, args.batch_tokens, n_params, fpt)
        print(f"done: step {step}, val loss {m.get('val_loss')}, val bpb {m.get('val_bpb')} -> {out}")
    training.teardown(rt)


if __name__ == "__main__":
    run_main(main)
