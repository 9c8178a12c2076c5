"""The feed-forward's bias and GELU with a backward that also sums the bias gradient (Triton).

Why: in the profile of a BERT-base step, each layer's GELU backward (137 us) writes the
gradient of the intermediate product, [tokens, 3072], and a second kernel (38 us) reads it
all again to sum the bias gradient (docs/benchmarks.md, "bf16 residual stream"). Here the
product runs without its bias, the bias and GELU run in one autograd function, and its
backward is one Triton kernel that writes that gradient and, per block of rows, its column
sums; the bias gradient is the sum of those few rows. That saves one read of the
[tokens, 3072] gradient a layer.

The forward computes GELU(product + bias) as Hugging Face's BERT does (exact GELU, with
`torch.compile` one fused kernel), except that the product is rounded to autocast's dtype
before the bias is added instead of after (in evaluation too, which runs the same blocks).
Candidate `bias-gelu` of `bench/candidates.py`; for BERT intermediate blocks with a plain
linear layer and exact GELU, others run as they are. Nothing here runs on CPU unless
Triton's interpreter is on (`TRITON_INTERPRET=1`).
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor, nn
from transformers.activations import GELUActivation

ROWS = 64
COLUMNS = 128
"""The tile of one program of the backward kernel."""

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _backward_kernel(
    grad_ptr,
    product_ptr,
    bias_ptr,
    grad_product_ptr,
    partial_ptr,
    rows,
    columns,
    ROWS: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    """Tile (i, j): the gradient of GELU(product + bias) with respect to its input, and the
    tile's column sums of it into row i of `partial`."""
    row = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    column = tl.program_id(1) * COLUMNS + tl.arange(0, COLUMNS)
    inside = (row < rows)[:, None] & (column < columns)[None, :]
    offsets = row[:, None] * columns + column[None, :]
    grad = tl.load(grad_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    x = tl.load(product_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    x += tl.load(bias_ptr + column, mask=column < columns, other=0.0).to(tl.float32)[None, :]
    cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))  # x / sqrt(2)
    density = tl.exp(-0.5 * x * x) * 0.3989422804014327  # / sqrt(2 pi)
    grad_input = grad * (cdf + x * density)
    stored = grad_input.to(grad_product_ptr.dtype.element_ty)
    tl.store(grad_product_ptr + offsets, stored, mask=inside)
    sums = tl.sum(grad_input, 0)  # zero outside: `grad` loads as zero there
    tl.store(partial_ptr + tl.program_id(0) * columns + column, sums, mask=column < columns)


@torch.library.custom_op("kubetune_bench::bias_gelu_backward", mutates_args=())
def bias_gelu_backward(grad: Tensor, product: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """The gradients of GELU(product + bias) [..., F] with respect to `product` (in its dtype)
    and `bias` (in the bias's), for the output gradient `grad`."""
    shape, columns = product.shape, product.shape[-1]
    grad = grad.reshape(-1, columns).contiguous()
    product = product.reshape(-1, columns).contiguous()
    rows = product.shape[0]
    grad_product = torch.empty_like(product)
    blocks = triton.cdiv(rows, ROWS)
    partial_sums = torch.empty((blocks, columns), dtype=torch.float32, device=product.device)
    _backward_kernel[(blocks, triton.cdiv(columns, COLUMNS))](
        grad, product, bias, grad_product, partial_sums, rows, columns, ROWS=ROWS, COLUMNS=COLUMNS
    )
    return grad_product.view(shape), partial_sums.sum(0).to(bias.dtype)


@bias_gelu_backward.register_fake
def _backward_shape(grad: Tensor, product: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    return torch.empty_like(product), torch.empty_like(bias)


class BiasGelu(torch.autograd.Function):
    """GELU(product + bias), with `bias_gelu_backward` as its backward."""

    @staticmethod
    def forward(ctx: Any, product: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(product, bias)
        return F.gelu(product + bias.to(product.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        product, bias = ctx.saved_tensors
        return bias_gelu_backward(grad, product, bias)


def _intermediate(block: nn.Module, states: Tensor) -> Tensor:
    product = F.linear(states, block.dense.weight)
    if not ((product.is_cuda and product.dtype != torch.float32) or _INTERPRETED):
        return block.intermediate_act_fn(product + block.dense.bias)
    return BiasGelu.apply(product, block.dense.bias)


def fits(block: nn.Module) -> bool:
    """Whether a BERT intermediate block is a plain linear layer with a bias and exact GELU."""
    act = getattr(block, "intermediate_act_fn", None)
    dense = getattr(block, "dense", None)
    return (
        type(dense) is nn.Linear
        and dense.bias is not None
        and type(act) is GELUActivation
        and act.act is F.gelu
    )


def install(block: nn.Module) -> None:
    """Run a fitting intermediate block's forward through `BiasGelu` (`fits`)."""
    if fits(block):
        block.forward = partial(_intermediate, block)
