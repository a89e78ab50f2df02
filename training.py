"""The training engine: what every training stage shares, so that none of them copies another.

    the optimizer    AdamW (our own), its parameter groups, global-norm clipping
    the schedule     linear warm-up, then cosine decay to a floor
    the machine      devices and DDP through torchrun (Runtime), the autocast policy, wrapping
                     the model for DDP or FSDP (wrap), gradient sync during accumulation
    the safety net   the non-finite stop
    the record       log.jsonl and its curves; accounting (tokens, FLOPs, wall time, device)
                     for meta.json; MFU against a peak
    the state        save_train_state / load_train_state: any number of named models and
                     optimizers, extra tensors and numbers, the step and every RNG, so that a
                     killed run resumes bit for bit

A stage script (train.py, sft.py, reward.py, ppo.py, distillation) imports this module and
model.py, and writes its own loop with these pieces, so the loop reads as its algorithm:

    rt = training.setup_runtime(args.device, args.threads)
    model = training.wrap(raw, rt, fsdp=args.fsdp)
    opt = training.AdamW(training.param_groups(raw, wd), lr)
    for step ...:
        opt.lr = training.lr_at(step, ...)
        ... forward, backward under training.grad_sync(model, last) ...
        norm = training.clip_grad_norm(model.parameters(), clip); opt.step()
    training.save_train_state(out / "train_state.pt", step, {"model": raw}, {"adamw": opt}, ...)

References: Kingma & Ba 2015 (Adam); Loshchilov & Hutter 2019 (decoupled weight decay,
cosine schedule); Chowdhery et al. 2022 (MFU); PyTorch's DDP and FSDP2 (`fully_shard`,
Zhao et al. 2023); nanoGPT and nanochat (the loop's shape).

Not included: loss scaling (bf16 needs none), ZeRO-style optimizer sharding beyond what FSDP
gives (our AdamW's moments live on each parameter's shard), gradient checkpointing.
"""

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from common import StageError, atomic_open, pick_device, save_figure

# ----------------------------------------------------------------------------- the optimizer


class AdamW:
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), written out.

        m = b1 m + (1 - b1) g                  first moment (momentum)
        v = b2 v + (1 - b2) g^2                second moment (per-weight scale)
        m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)      bias correction: m, v start at 0
        w = w - lr wd w                        decay, not part of the gradient ("decoupled")
        w = w - lr m_hat / (sqrt(v_hat) + eps)

    The epsilon convention: eps is added after the bias-corrected square root, as
    torch.optim.AdamW does (some implementations add it to v, or before the correction; at
    eps = 1e-8 the difference shows only where v is ~0). `groups` is a list of
    (params, weight_decay). Under FSDP the parameters are shards (DTensors) and so are m and v:
    every line above is elementwise, so each process updates its own shard.
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
            copy_into(dst, src)


def param_groups(model, weight_decay):
    """Matrices of the linear layers decay; embeddings (and the tied LM head) and norms do not:
    pulling a norm's gain or a rare token's embedding to zero is not regularisation."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():          # a tied weight appears once
        (decay if p.dim() >= 2 and "tok_emb" not in name else no_decay).append(p)
    return [(decay, weight_decay), (no_decay, 0.0)]


@torch.no_grad()
def clip_grad_norm(params, max_norm):
    """Scale all gradients by max_norm / ||g|| when their global L2 norm ||g|| exceeds it;
    max_norm 0 = measure only. Returns ||g|| before clipping.

    Under FSDP each gradient is a shard: the norm of a sharded tensor is reduced over the
    processes (a replicated DTensor), and full_tensor() makes it a plain number again."""
    grads = [p.grad for p in params if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2.0) for g in grads]), 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    if max_norm > 0:
        scale = torch.clamp(max_norm / (total + 1e-6), max=1.0)
        for g in grads:
            g.mul_(scale)
    return total


# ----------------------------------------------------------------------------- the schedule

def lr_at(step, max_lr, warmup, max_steps, min_frac):
    """Linear warm-up over `warmup` steps, then cosine decay to min_frac * max_lr at max_steps."""
    if step < warmup:
        return max_lr * (step + 1) / warmup
    progress = min((step - warmup) / max(1, max_steps - warmup), 1.0)
    min_lr = max_lr * min_frac
    return min_lr + 0.5 * (max_lr - min_lr) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- the machine

@dataclass(frozen=True)
class Runtime:
    """Where this process runs: its device and its place among the torchrun processes."""
    device: str            # "cuda:3", "mps", "cpu"
    rank: int = 0          # this process, 0..world-1
    world: int = 1         # processes in all
    local_rank: int = 0    # this process on its machine (which GPU)

    @property
    def master(self):
        """Only rank 0 prints, logs, plots and writes files."""
        return self.rank == 0

    @property
    def device_type(self):
        return torch.device(self.device).type


class ArgumentParser(argparse.ArgumentParser):
    """argparse for a stage torchrun may launch N times: every process parses the same flags,
    so a usage error (and --help) is printed by rank 0 alone, not N times over, and every
    process exits with argparse's status 2 before any process group is started."""

    def print_help(self, file=None):
        if os.environ.get("RANK", "0") == "0":
            super().print_help(file)

    def error(self, message):
        if os.environ.get("RANK", "0") == "0":
            super().error(message)                  # prints the usage and the message, exits 2
        sys.exit(2)


def check_device(device):
    """`device` if this machine has it; otherwise the one line that says so (rather than a
    traceback, or a misleading error from the first tensor moved there)."""
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise StageError(f"--device {device}: no CUDA device is visible to torch; use --device cpu (or auto)")
    if device == "mps" and not torch.backends.mps.is_available():
        raise StageError("--device mps: Metal is not available here; use --device cpu (or auto)")
    return device


def setup_runtime(device="auto", threads=0):
    """The Runtime of this process, initialising the process group when launched by torchrun
    (RANK and WORLD_SIZE set): NCCL between GPUs, gloo between CPU processes (so DDP and FSDP
    can be tested on a laptop). threads: CPU threads per process, 0 = torch's default."""
    device = check_device(pick_device(device))
    if threads:
        torch.set_num_threads(threads)
    if not ("RANK" in os.environ and "WORLD_SIZE" in os.environ):
        return Runtime(device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "cuda":
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return Runtime(device, rank, world, local)


def teardown(rt):
    """Leave together, then free the group; under gloo destroying it can hang a process whose
    peer has just exited (a two-process PPO run in four), so it is left to the process's exit."""
    if rt.world > 1:
        dist.barrier()
        if dist.get_backend() != "gloo":
            dist.destroy_process_group()


def resolve_dtype(dtype, device):
    """The autocast policy: "auto" = bf16 on CUDA (no loss scaling needed, unlike fp16), fp32
    elsewhere (CPU bf16 matmuls are slower than fp32 on most CPUs, and MPS lacks some ops)."""
    if dtype != "auto":
        return dtype
    return "bf16" if torch.device(device).type == "cuda" else "fp32"


def autocast(device, dtype="auto"):
    """The context every forward pass runs in: bf16 autocast, or nothing (full precision).
    RMSNorm and the losses stay in fp32 inside it (model.py and kernels/ see to that)."""
    if resolve_dtype(dtype, device) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return nullcontext()


def wrap(model, rt, compile=False, fsdp=False):
    """The model the training step calls, for this runtime:
    - fsdp: each transformer block, then the rest, sharded over the processes (FSDP2,
      `fully_shard`): a process holds 1/world of every weight, gradient and AdamW moment, and
      a block's weights are all-gathered just before it runs, then freed. In place: `model`
      itself becomes sharded, so build the optimizer after this call.
    - several processes otherwise: DDP, every process a full copy, gradients all-reduced.
    - compile: torch.compile first (the wrapper then runs the compiled module).
    Checkpoints always come from the unwrapped module (full_state_dict)."""
    if fsdp:
        if rt.world == 1:
            raise StageError("--fsdp shards the model over processes: launch it with torchrun "
                             "--nproc_per_node=N (N >= 2), or drop --fsdp")
        for block in model.blocks:
            fully_shard(block)
        fully_shard(model)
        return torch.compile(model) if compile else model
    if compile:
        model = torch.compile(model)
    if rt.world > 1:
        model = DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device_type == "cuda" else None)
    return model


def is_sharded(model):
    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def grad_sync(model, sync):
    """Gradient accumulation over several micro-batches needs the processes to average their
    gradients once, after the last backward pass, not after every one: the context to run a
    micro-batch's forward and backward in. sync=False skips the all-reduce (DDP) or the
    reduce-scatter (FSDP) of that backward."""
    if isinstance(model, DistributedDataParallel) and not sync:
        return model.no_sync()
    if is_sharded(model):
        getattr(model, "_orig_mod", model).set_requires_gradient_sync(sync)
    return nullcontext()


def mean_over_processes(value, rt):
    """The mean of a number over all processes (every process gets it)."""
    if rt.world == 1:
        return value
    t = torch.tensor([value], device=rt.device)
    dist.all_reduce(t)
    return t.item() / rt.world


# ----------------------------------------------------------------------------- the safety net

def stop_if_not_finite(loss, grad_norm, step, out_dir):
    """A loss or gradient norm of inf or NaN means the run has diverged: stop with one line
    that says where the last good checkpoint is, rather than train on garbage."""
    if math.isfinite(loss) and math.isfinite(float(grad_norm)):
        return
    state = Path(out_dir) / "train_state.pt"
    where = f"the last good checkpoint is in {out_dir}" if state.exists() else "no checkpoint was written"
    raise StageError(f"the loss became {loss} at step {step}; {where}; lower --lr or check the data")


# ----------------------------------------------------------------------------- the record

def write_log(out_dir, log):
    """log.jsonl: one JSON object per logged step, atomically (the whole file each time)."""
    with atomic_open(Path(out_dir) / "log.jsonl") as f:
        f.writelines(json.dumps(r) + "\n" for r in log)


def plot_curves(out_dir, log, figures):
    """One PNG per figure: figures = {"loss": [("train", "loss"), ("validation", "val_loss")], ...},
    each series the log's rows that have its key, by step. Series logged at evaluations (keys
    starting with "val") are drawn with markers: they have few points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    for name, series in figures.items():
        fig, ax = plt.subplots(figsize=(7, 4))
        for label, key in series:
            rows = [r for r in log if r.get(key) is not None]
            if rows:
                ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=label,
                        marker="o" if key.startswith("val") else None)
        ax.set_xlabel("step")
        ax.set_ylabel(name)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, Path(out_dir) / f"{name}.png")


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


def device_name(device):
    """What the run ran on, in words, for the cost report: the GPU's name or the CPU's."""
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Accounting:
    """What a run spends, kept in its meta.json so that the costs stage can turn it into
    energy, device-hours and money without touching the stages:

        tokens    processed by the optimizer steps (all processes together)
        flops     tokens x FLOPs per token, with the formula that gave the latter
        seconds   wall-clock time of the stage (a resumed run adds its time to the killed one's)
        device    what it ran on, and how many processes

    It travels in train_state.pt (state_dict), so the totals survive a kill and a resume."""

    def __init__(self, rt, flops_per_token, flops_formula):
        self.device, self.world = str(rt.device), rt.world
        self.flops_per_token, self.flops_formula = flops_per_token, flops_formula
        self.tokens, self.seconds = 0, 0.0
        self._since = time.perf_counter()

    def add_tokens(self, n):
        self.tokens += n

    def _elapsed(self):
        now = time.perf_counter()
        self.seconds, self._since = self.seconds + now - self._since, now
        return self.seconds

    def record(self):
        """The meta.json entry."""
        seconds = self._elapsed()
        return {"tokens": self.tokens, "flops": self.tokens * self.flops_per_token,
                "flops_per_token": self.flops_per_token, "flops_formula": self.flops_formula,
                "wall_seconds": round(seconds, 1), "device": self.device,
                "device_name": device_name(self.device), "processes": self.world,
                "device_hours": round(seconds * self.world / 3600, 4)}

    def state_dict(self):
        return {"tokens": self.tokens, "seconds": self._elapsed()}

    def load_state_dict(self, state):
        self.tokens, self.seconds = int(state["tokens"]), float(state["seconds"])


# ----------------------------------------------------------------------------- the state

def full_state_dict(model):
    """The unwrapped model's state_dict on the CPU, whole: under FSDP each shard is gathered
    (a collective: every process must call this), elsewhere the tensors as they are."""
    return {name: t.detach().cpu() for name, t in _gathered(model.state_dict()).items()}


def copy_into(dst, src):
    """dst <- src, where dst may be a shard (DTensor) of the full tensor src."""
    if isinstance(dst, DTensor):
        src = distribute_tensor(src.to(dst.device_mesh.device_type), dst.device_mesh, dst.placements)
    dst.copy_(src)


def _gathered(obj):
    """A state (dicts, lists, tensors, numbers) with every DTensor replaced by its full tensor."""
    if isinstance(obj, DTensor):
        return obj.full_tensor().cpu()
    if isinstance(obj, dict):
        return {k: _gathered(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_gathered(v) for v in obj]
    return obj


def rng_state():
    """Every RNG a stage may draw from, as tensors and numbers (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                       "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
             "python": torch.tensor(random.getstate()[1], dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        n = state["numpy"]
        np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                             n["cached_gaussian"]))
    if "python" in state:
        random.setstate((3, tuple(int(x) for x in state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_train_state(path, step, models, optimizers, tokenizer_sha256, extra=None, master=True):
    """Write everything a resumed run needs, atomically, self-contained (weights included):

        {"step", "models": {name: state_dict}, "optimizers": {name: state}, "extra": {...},
         "rng": every RNG, "tokenizer_sha256"}

    `models` are the ones being trained (PPO: policy and value); frozen ones (a reference
    model, a reward model) are loaded from their own checkpoints, not saved here. `extra`
    holds tensors and numbers a stage keeps between steps (a KL controller, a rollout
    generator's state, the accounting). Under FSDP every process must call this (the shards
    are gathered); only `master` writes. Returns the models' whole state_dicts, for the
    caller to publish (save_checkpoint) without gathering them again."""
    state = {"step": step,
             "models": {name: full_state_dict(m) for name, m in models.items()},
             "optimizers": {name: _gathered(o.state_dict()) for name, o in optimizers.items()},
             "extra": _gathered(extra or {}), "rng": rng_state(), "tokenizer_sha256": tokenizer_sha256}
    if master:
        with atomic_open(path, "wb") as f:
            torch.save(state, f)
    return state["models"]


def load_train_state(path, models, optimizers, tokenizer_sha256):
    """Restore models, optimizers and every RNG from a save_train_state file, checking that it
    belongs to this run; returns (step, extra). Call it after `wrap` and after building the
    optimizers (under FSDP the saved full tensors are cut into this process's shards)."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"--resume: no {path}; start without --resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved_models, saved_opts = state["models"], state["optimizers"]
    except Exception as e:            # a truncated or foreign file: torch raises many kinds
        raise StageError(f"{path} is not a readable training state ({type(e).__name__}); it may "
                         f"be truncated: start again without --resume") from None
    if state.get("tokenizer_sha256") != tokenizer_sha256:
        raise StageError(f"{path} was trained with another tokenizer than the one in --data-dir; "
                         f"resume with the same data or start again")
    if set(saved_models) != set(models) or set(saved_opts) != set(optimizers):
        raise StageError(f"{path} holds models {sorted(saved_models)} and optimizers {sorted(saved_opts)}, "
                         f"this stage trains {sorted(models)} with {sorted(optimizers)}; start again")
    for name, model in models.items():
        try:
            with torch.no_grad():
                own = model.state_dict()
                if set(own) != set(saved_models[name]):
                    raise RuntimeError("keys differ")
                for key, t in saved_models[name].items():
                    if own[key].shape != t.shape:
                        raise RuntimeError("shapes differ")
                    copy_into(own[key], t)
        except RuntimeError:
            raise StageError(f"{path} holds a {name} of another shape or vocabulary than the flags "
                             f"and the tokenizer give; use the same flags") from None
    for name, opt in optimizers.items():
        opt.load_state_dict(saved_opts[name])
    set_rng_state(state["rng"])
    return int(state["step"]), state.get("extra", {})
