"""Set before anything imports Triton: the kernel tests run Triton's interpreter on the CPU."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
