"""Dropout for the packed training forward, with a keep mask of one bit per value.

Why: BERT drops out its hidden states 25 times a step (the embeddings, and after each layer's
attention and feed-forward), each over every token's hidden vector. PyTorch's dropout, and
Inductor's, make one Philox call (ten rounds of 32-bit multiplies) per value and keep a byte
per value for the backward. Here a Triton kernel draws eight 16-bit values per Philox call
and packs eight keep bits into a byte. Compiled, the unpacking of the bits fuses into the
kernels around it; one `arange` of shifts serves every dropout of the graph, so the backward
keeps most layers' unpacked masks (a byte per value) rather than recomputing them. Keeping
the bits instead (a constant of shifts per call) measured 17% slower on an H200, with the
GPU waiting on the host (docs/benchmarks.md, 2026-12-05).
Measured on an H200 as a benchmark candidate, with BERT-base at batch 256, this and the bf16
residual stream (`kubetune_trainer.model`) made a training step 3.7% faster, at the same
quality over three seeds (docs/benchmarks.md).

The drop probability is rounded to a multiple of 1/65,536. The seed of each call comes from
torch's generator, so `torch.manual_seed` and a saved random state decide the masks, as
resuming and gradient caching need. On other devices than CUDA this is PyTorch's dropout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor

DRAW_LEVELS = 1 << 16
"""Each keep draw is 16 bits."""

_BLOCK = 1024

KERNEL_DEVICES = {"cuda"}
"""The device types on which `dropout` runs the kernel. Tests add "cpu": with
`TRITON_INTERPRET=1` set before Triton is imported, Triton's interpreter runs the kernel on
CPU tensors, too slowly for training there (it made the CPU training tests five times
slower)."""


@triton.jit
def _keep_bits_kernel(seed_ptr, bits_ptr, count, threshold, BLOCK: tl.constexpr):
    """Byte i of `bits` holds the keep bits of values 8i to 8i+7: bit j is set when the j-th
    16-bit half of Philox(seed, counter i) is at least `threshold`."""
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    r0, r1, r2, r3 = tl.randint4x(tl.load(seed_ptr), offsets)
    bits = ((r0 & 0xFFFF) >= threshold).to(tl.uint32)
    bits |= ((r0 >> 16) >= threshold).to(tl.uint32) << 1
    bits |= ((r1 & 0xFFFF) >= threshold).to(tl.uint32) << 2
    bits |= ((r1 >> 16) >= threshold).to(tl.uint32) << 3
    bits |= ((r2 & 0xFFFF) >= threshold).to(tl.uint32) << 4
    bits |= ((r2 >> 16) >= threshold).to(tl.uint32) << 5
    bits |= ((r3 & 0xFFFF) >= threshold).to(tl.uint32) << 6
    bits |= ((r3 >> 16) >= threshold).to(tl.uint32) << 7
    tl.store(bits_ptr + offsets, bits.to(tl.uint8), mask=offsets < count)


@torch.library.custom_op("kubetune::keep_bits", mutates_args=())
def keep_bits(seed: Tensor, values: int, threshold: int) -> Tensor:
    """The keep bits of `values` values, eight to a byte (`_keep_bits_kernel`), each set with
    probability 1 - threshold / DRAW_LEVELS; `seed` is one int64 on the kernel's device.

    A custom operator, so that `torch.compile` treats the kernel as one opaque step whose
    output shape it knows (`_keep_bits_shape`), also for a symbolic count of values."""
    bits = torch.empty((values + 7) // 8, dtype=torch.uint8, device=seed.device)
    grid = (triton.cdiv(bits.numel(), _BLOCK),)
    _keep_bits_kernel[grid](seed, bits, bits.numel(), threshold, BLOCK=_BLOCK)
    return bits


@keep_bits.register_fake
def _keep_bits_shape(seed: Tensor, values: int, threshold: int) -> Tensor:
    return seed.new_empty(((values + 7) // 8,), dtype=torch.uint8)


def bit_dropout(states: Tensor, p: float) -> Tensor:
    """Dropout at rate `p` with its mask from `keep_bits`, unpacked by shifts."""
    seed = torch.randint(0, 1 << 62, (1,), device=states.device)
    bits = keep_bits(seed, states.numel(), round(p * DRAW_LEVELS))
    shifts = torch.arange(8, device=states.device, dtype=torch.uint8)
    keep = ((bits.unsqueeze(1) >> shifts) & 1).view(-1)[: states.numel()].view_as(states)
    return states * keep.to(states.dtype) * (1.0 / (1.0 - p))


def dropout(states: Tensor, p: float, training: bool) -> Tensor:
    """Dropout at rate `p` when `training`: `bit_dropout` on `KERNEL_DEVICES`, else
    PyTorch's."""
    if not (training and p > 0):
        return states
    if states.device.type in KERNEL_DEVICES:
        return bit_dropout(states, p)
    return F.dropout(states, p, training=True)
