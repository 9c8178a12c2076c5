"""The keep-bit dropout's kernel as a Triton operator that Inductor launches from its own code.

Why: `kubetune_trainer.dropout.keep_bits` is a custom operator, opaque to `torch.compile`:
each of BERT-base's 25 hidden dropouts a step leaves the compiled code for Python, PyTorch's
dispatcher and Triton's Python launcher. In the third session's profile, whose host was
slowed by recording its operations, the GPU waited for the host around that kernel for about
6 ms a step (`bench/trace_timeline.py` on that trace). Declared with `torch.library.triton_op`,
the same kernel is visible to Inductor, which calls it from its generated code like its own
kernels. Candidate `inline-dropout` of `bench/candidates.py`; the kernel and the masks are the
trainer's.

Under Triton's interpreter (the CPU tests) `torch.compile` cannot trace such an operator, so
there the tests run it eagerly, and check in a process without the interpreter that tracing
turns it into Inductor's Triton-kernel node.
"""

from __future__ import annotations

import torch
import triton
from torch import Tensor

from kubetune_trainer.dropout import _BLOCK, _keep_bits_kernel


@torch.library.triton_op("kubetune_bench::keep_bits_inline", mutates_args=())
def keep_bits(seed: Tensor, values: int, threshold: int) -> Tensor:
    """`kubetune_trainer.dropout.keep_bits`, as a Triton operator."""
    bits = torch.empty((values + 7) // 8, dtype=torch.uint8, device=seed.device)
    count = bits.numel()
    torch.library.wrap_triton(_keep_bits_kernel)[(triton.cdiv(count, _BLOCK),)](
        seed, bits, count, threshold, BLOCK=_BLOCK
    )
    return bits
