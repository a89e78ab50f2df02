"""What the GPU compiler makes of every Triton kernel, on a machine without a GPU.

Triton compiles a kernel in stages (Python -> Triton IR -> TritonGPU IR -> LLVM IR -> PTX ->
cubin) and every stage runs on the CPU: the Triton wheel carries NVIDIA's assembler (ptxas) and
cuobjdump. So each launch the kernels make in a training step can be compiled here for a Hopper
GPU (sm_90: H100, H200) or an Ampere one (sm_80: A100), with the same argument types,
specialisations and autotune configurations a GPU run would compile, and the cubin read back:

- registers per thread, and local memory per thread (a stack frame or spilled registers:
  register traffic turned into memory traffic);
- shared memory per program: more than the SM offers and the launch fails with
  "out of resources";
- the tensor-core instruction `tl.dot` became: `wgmma` (Hopper's asynchronous warp-group MMA),
  `mma` (Ampere's synchronous one), or none (fp32 in "ieee" precision runs on the FMA units);
- occupancy: how many programs of the kernel fit on one SM at once, given its registers,
  shared memory and threads, and the warps that keeps busy out of the SM's 64.

This catches what the CPU interpreter cannot see (a tile that does not fit, a `tl.dot` the
compiler rejects) before a scarce GPU hour, and shows what each tile size costs.
tests/test_kernels.py runs it for sm_90. It measures no speed: that is bench/gpu.py. It
follows the launch path of Triton 3.6 (JITFunction.run, private helpers included), the
version requirements.txt pins; another version may need compile_instead_of_launch adjusted.

Run:
    python bench/compile.py                      # sm_90, a table
    python bench/compile.py --arch 80 --json out/compile.json
"""

import argparse
import contextlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":          # the interpreter never compiles anything
    sys.exit("error: unset TRITON_INTERPRET to compile the kernels (the interpreter runs them in NumPy)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kernels import (triton_attention, triton_cross_entropy, triton_linear_cross_entropy,  # noqa: E402
                     triton_matmul, triton_rmsnorm, triton_swiglu)

# What one SM offers (CUDA C programming guide, "compute capabilities"): registers, threads,
# resident programs (blocks), shared memory per SM and the most one program may ask for.
SM = {
    90: {"name": "Hopper (H100, H200)", "regs": 65536, "threads": 2048, "blocks": 32,
         "smem": 228 * 1024, "smem_per_block": 227 * 1024},
    80: {"name": "Ampere (A100)", "regs": 65536, "threads": 2048, "blocks": 32,
         "smem": 164 * 1024, "smem_per_block": 163 * 1024},
}
SMEM_RESERVED = 1024            # the driver keeps 1 KB of shared memory per resident program


# ----------------------------------------------------------------------------- compiling
@contextlib.contextmanager
def compile_instead_of_launch(arch, found):
    """Within the block, a kernel launch compiles the kernel for `arch` and appends
    (kernel name, constexprs, options, compiled kernel) to `found` instead of running it;
    an autotuned launch compiles every configuration. Compiling goes through the same steps
    as JITFunction.run: the binder turns the arguments into a signature and specialisations
    (a pointer or an int divisible by 16 is marked so; an int equal to 1 becomes a constant)."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    run, tuned_run = JITFunction.run, Autotuner.run

    def compile_launch(fn, *args, grid, warmup, **kwargs):
        kwargs.setdefault("debug", False)
        kwargs.setdefault("instrumentation_mode", "")
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
        names = {fn.arg_names[path[0]]: value for path, value in constexprs.items()}
        found.append((fn.__name__, names, {"num_warps": options.num_warps, "num_stages": options.num_stages},
                      compiled))

    def compile_every_config(tuner, *args, **kwargs):
        for config in tuner.configs:
            compile_launch(tuner.fn, *args, **kwargs, **config.all_kwargs())

    JITFunction.run, Autotuner.run = compile_launch, compile_every_config
    try:
        yield found
    finally:
        JITFunction.run, Autotuner.run = run, tuned_run


def launches(dtype, head_dims):
    """Forward and backward of every kernel. In 16 bits, at the shapes of a GPT-2-sized
    training step (n_embd 768, vocabulary 50,304, T 1,024) and of bench/gpu.py (the head
    dims, causal or not; a 4096-wide RMSNorm; the teaching matmul). In fp32, what bench/gpu.py's
    fp32 checks launch: a small model (head dim 32, causal) with the loss on its logits.
    The tensors are small where only their types and strides matter: nothing runs, so their
    values are never read."""
    def grads(out, *inputs):
        torch.autograd.grad(out, inputs, torch.ones_like(out))

    B, T, n_embd, V = 1, 1024, 768, 50304
    half = dtype != torch.float32
    for D in head_dims if half else (32,):
        for causal in (True, False) if half else (True,):
            q, k, v = (torch.empty(B, 2, T, D, dtype=dtype, requires_grad=True) for _ in range(3))
            grads(triton_attention.attention(q, k, v, causal), q, k, v)
    for width in (n_embd, 4096):
        x = torch.empty(16 * T, width, dtype=torch.float32 if width == n_embd else dtype,    # rows per program
                        requires_grad=True)                                                   # depend on rows
        w = torch.empty(width, dtype=dtype, requires_grad=True)
        grads(triton_rmsnorm.rms_norm(x, w, 1e-5), x, w)
    a, b = (torch.empty(64, 4 * n_embd, dtype=dtype, requires_grad=True) for _ in range(2))
    grads(triton_swiglu.swiglu(a, b), a, b)
    logits = torch.empty(64, V, dtype=dtype, requires_grad=True)
    targets = torch.zeros(64, dtype=torch.long)
    grads(triton_cross_entropy.cross_entropy(logits, targets), logits)
    if half:
        h = torch.empty(64, n_embd, dtype=dtype, requires_grad=True)
        w = torch.empty(V, n_embd, dtype=dtype, requires_grad=True)
        grads(triton_linear_cross_entropy.linear_cross_entropy(h, w, targets), h, w)
        triton_matmul.matmul(torch.empty(4096, 4096, dtype=dtype), torch.empty(4096, 4096, dtype=dtype))


# ----------------------------------------------------------------------------- reading the cubin
def resource_usage(cubin):
    """Registers per thread, local memory per thread (the stack frame and spill slots:
    what did not fit in registers goes there, and every access is a memory access), and
    static shared memory, read from the cubin by cuobjdump."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([str(tool), "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    regs, stack, local, static_smem = (int(re.search(rf"\b{key}:(\d+)", text).group(1))
                                       for key in ("REG", "STACK", "LOCAL", "SHARED"))
    return regs, stack + local, static_smem


def tensor_cores(ptx):
    if "wgmma.mma_async" in ptx:
        return "wgmma"
    if re.search(r"\bmma\.sync", ptx):
        return "mma"
    return "-"


def occupancy(regs, smem, warps, sm):
    """Programs resident on one SM, and the reason it is not more: registers are given out per
    warp in units of 256 (regs x 32 threads rounded up), shared memory per program plus the
    reserved 1 KB, threads in warps of 32."""
    regs_per_warp = math.ceil(regs * 32 / 256) * 256
    limits = {"threads": sm["threads"] // (32 * warps),              # a tie names the hard limits first
              "programs": sm["blocks"],
              "registers": sm["regs"] // (regs_per_warp * warps),
              "shared memory": sm["smem"] // (smem + SMEM_RESERVED)}
    limiter = min(limits, key=limits.get)
    return limits[limiter], limiter


def describe(name, constexprs, options, compiled, sm):
    regs, local_bytes, static_smem = resource_usage(compiled.asm["cubin"])
    smem = compiled.metadata.shared + static_smem
    programs, limiter = occupancy(regs, smem, options["num_warps"], sm)
    shown = {k: v for k, v in constexprs.items() if k in ("D", "CAUSAL") or k.startswith(("BLOCK", "GROUP", "ROWS"))}
    return {"kernel": name, "constexprs": shown, **options, "registers": regs, "local_bytes": local_bytes,
            "shared_bytes": smem, "fits": smem <= sm["smem_per_block"],
            "tensor_cores": tensor_cores(compiled.asm["ptx"]), "programs_per_sm": programs, "limited_by": limiter,
            "warps_per_sm": programs * options["num_warps"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", type=int, default=90, choices=sorted(SM), help="compute capability: 90 Hopper, 80 Ampere")
    p.add_argument("--dtypes", default="bf16,fp32", help="comma-separated dtypes of the launches (bf16, fp16, fp32)")
    p.add_argument("--head-dims", default="32,64,128", help="comma-separated attention head dims (16-bit launches)")
    p.add_argument("--json", default="", help="also write the rows to this JSON file ('' = do not)")
    args = p.parse_args()
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    sm = SM[args.arch]
    t0 = time.time()
    rows, seen = [], set()
    for name in args.dtypes.split(","):
        if name not in dtypes:
            sys.exit(f"error: unknown dtype {name!r}: choose among {', '.join(dtypes)}")
        found = []
        with compile_instead_of_launch(args.arch, found):
            launches(dtypes[name], [int(d) for d in args.head_dims.split(",")])
        for kernel, constexprs, options, compiled in found:
            key = (kernel, str(constexprs), str(options), str(compiled.src.signature))
            if key not in seen:
                seen.add(key)
                rows.append({"dtype": name, **describe(kernel, constexprs, options, compiled, sm)})
    print(f"sm_{args.arch}, {sm['name']}: {len(rows)} compiled kernels, Triton {triton.__version__}, "
          f"{time.time() - t0:.0f} s\n")
    print("| kernel | dtype | constexprs | warps | stages | regs | local B | shared KB | tensor cores "
          "| programs/SM (limit) | warps/SM |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|---:|")
    for r in rows:
        consts = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        print(f"| {r['kernel']} | {r['dtype']} | {consts} | {r['num_warps']} | {r['num_stages']} | {r['registers']} "
              f"| {r['local_bytes']} | {r['shared_bytes'] / 1024:.1f}{'' if r['fits'] else ' (TOO BIG)'} "
              f"| {r['tensor_cores']} | {r['programs_per_sm']} ({r['limited_by']}) | {r['warps_per_sm']} |")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"arch": args.arch, "triton": triton.__version__, "kernels": rows}, indent=1))
        os.replace(tmp, out)
    too_big = [r["kernel"] for r in rows if not r["fits"]]
    if too_big:
        sys.exit(f"error: {', '.join(too_big)} ask for more shared memory than sm_{args.arch} has: use smaller tiles "
                 "or fewer stages")


if __name__ == "__main__":
    main()
