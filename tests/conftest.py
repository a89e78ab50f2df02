"""Set before anything imports Triton: the kernel tests run Triton's interpreter on the CPU.
And the one fixture that touches the kernels' global backend, so no test leaves it changed."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import kernels  # noqa: E402


@pytest.fixture
def kernel_backend():
    """kernels.set_backend for one test (train.py --kernels sets it too); the default, "auto",
    is restored after it."""
    yield kernels.set_backend
    kernels.set_backend("auto")
