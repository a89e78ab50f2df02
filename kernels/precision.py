"""How the kernels' tl.dot multiplies fp32 inputs: a leaf module that every kernel imports
(the package's __init__ imports the kernels, so they do not import it back)."""

import torch


def dot_precision(x):
    """How the kernels' tl.dot multiplies fp32 inputs, following torch's setting for fp32
    matrix products (torch.set_float32_matmul_precision). Under torch's default, "highest",
    three TF32 products per multiply ("tf32x3": the operands split into a high and a low
    TF32 part) recover fp32 accuracy (~1e-6) on the tensor cores; "high" and "medium" allow
    one TF32 product (a 10-bit mantissa, ~1e-3). Triton's own default is one TF32 product,
    which would make an fp32 kernel differ from its twin by ~1e-3 on a GPU (the interpreter
    multiplies exactly and cannot show it); exact "ieee" products would leave the tensor
    cores idle and take minutes to compile. bf16 and fp16 inputs are unaffected."""
    if x.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest":
        return "tf32x3"
    return "tf32"
