"""Attention over packed short texts with each text's whole attention in one tile (Triton).

Why: in the BERT-base step, the memory-efficient kernel's variable-length attention took
1.6 ms forward and 3.5 ms backward (12 layers), about ten times what its arithmetic and its
bytes need at the Debian pairs' lengths: texts of 12 and 75 tokens on average, none over 128.
Here one program handles one text and one head: it loads the text's queries, keys and
values (at most 128 rows of 64), computes the whole score matrix in registers, and, in the
backward, recomputes it and writes the three input gradients, with no atomics and no second
pass. Texts are grouped by the tile that fits them (16, 32, 64 or 128 rows): one launch per
tile size over every (text, head), in which the texts of other sizes return at once, so the
grid needs no count from the device.

For texts longer than `MAX_TILE` the trainer's own kernel runs (`model._attend`); nothing
here runs on CPU unless Triton's interpreter is on (`TRITON_INTERPRET=1`).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch import Tensor

from kubetune_trainer import model as model_module

MAX_TILE = 128
TILES = (16, 32, 64, 128)
"""The tile sizes: a text of n tokens goes to the smallest that holds it (tl.dot needs 16)."""

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _load_rows(ptr, stride, start, length, head, DIM: tl.constexpr, TILE: tl.constexpr):
    """One head's rows of a text, [TILE, DIM], zero past its `length`."""
    rows = tl.arange(0, TILE)
    offsets = (start + rows)[:, None] * stride + head * DIM + tl.arange(0, DIM)[None, :]
    return tl.load(ptr + offsets, mask=(rows < length)[:, None], other=0.0)


@triton.jit
def _store_rows(
    ptr, values, start, length, head, HEADS: tl.constexpr, DIM: tl.constexpr, TILE: tl.constexpr
):
    """Store one head's rows of a text into a contiguous [T, HEADS, DIM] tensor."""
    rows = tl.arange(0, TILE)
    offsets = (start + rows)[:, None] * (HEADS * DIM) + head * DIM + tl.arange(0, DIM)[None, :]
    tl.store(ptr + offsets, values.to(ptr.dtype.element_ty), mask=(rows < length)[:, None])


@triton.jit
def _forward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    lse_ptr,
    cu_ptr,
    q_stride,
    k_stride,
    v_stride,
    scale,
    HEADS: tl.constexpr,
    DIM: tl.constexpr,
    LOW: tl.constexpr,
    TILE: tl.constexpr,
):
    text = tl.program_id(0)
    head = tl.program_id(1)
    start = tl.load(cu_ptr + text)
    length = tl.load(cu_ptr + text + 1) - start
    if (length > LOW) & (length <= TILE):
        q = _load_rows(q_ptr, q_stride, start, length, head, DIM, TILE)
        k = _load_rows(k_ptr, k_stride, start, length, head, DIM, TILE)
        v = _load_rows(v_ptr, v_stride, start, length, head, DIM, TILE)
        rows = tl.arange(0, TILE)
        valid = rows < length
        scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        peak = tl.max(scores, 1)
        weights = tl.exp(scores - peak[:, None])
        total = tl.sum(weights, 1)
        out = tl.dot(weights.to(v.dtype), v) / total[:, None]
        _store_rows(out_ptr, out, start, length, head, HEADS, DIM, TILE)
        tl.store(lse_ptr + (start + rows) * HEADS + head, peak + tl.log(total), mask=valid)


@triton.jit
def _backward_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    out_ptr,
    grad_out_ptr,
    lse_ptr,
    grad_q_ptr,
    grad_k_ptr,
    grad_v_ptr,
    cu_ptr,
    q_stride,
    k_stride,
    v_stride,
    grad_out_stride,
    scale,
    HEADS: tl.constexpr,
    DIM: tl.constexpr,
    LOW: tl.constexpr,
    TILE: tl.constexpr,
):
    text = tl.program_id(0)
    head = tl.program_id(1)
    start = tl.load(cu_ptr + text)
    length = tl.load(cu_ptr + text + 1) - start
    if (length > LOW) & (length <= TILE):
        q = _load_rows(q_ptr, q_stride, start, length, head, DIM, TILE)
        k = _load_rows(k_ptr, k_stride, start, length, head, DIM, TILE)
        v = _load_rows(v_ptr, v_stride, start, length, head, DIM, TILE)
        out = _load_rows(out_ptr, HEADS * DIM, start, length, head, DIM, TILE)
        grad_out = _load_rows(grad_out_ptr, grad_out_stride, start, length, head, DIM, TILE)
        rows = tl.arange(0, TILE)
        valid = rows < length
        lse = tl.load(lse_ptr + (start + rows) * HEADS + head, mask=valid, other=0.0)
        # the softmax's backward needs each row's sum of out * grad_out
        delta = tl.sum(out.to(tl.float32) * grad_out.to(tl.float32), 1)
        scores = tl.dot(q, tl.trans(k)) * scale
        weights = tl.exp(scores - lse[:, None])
        weights = tl.where(valid[:, None] & valid[None, :], weights, 0.0)
        grad_v = tl.dot(tl.trans(weights.to(v.dtype)), grad_out)
        grad_weights = tl.dot(grad_out, tl.trans(v))
        grad_scores = (weights * (grad_weights - delta[:, None])).to(q.dtype)
        grad_q = tl.dot(grad_scores, k) * scale
        grad_k = tl.dot(tl.trans(grad_scores), q) * scale
        _store_rows(grad_q_ptr, grad_q, start, length, head, HEADS, DIM, TILE)
        _store_rows(grad_k_ptr, grad_k, start, length, head, HEADS, DIM, TILE)
        _store_rows(grad_v_ptr, grad_v, start, length, head, HEADS, DIM, TILE)


def _tiles() -> list[tuple[int, int, int]]:
    """(lowest length excluded, tile, warps) per launch."""
    lows = (0, *TILES[:-1])
    warps = [8 if tile == MAX_TILE else 4 for tile in TILES]
    return list(zip(lows, TILES, warps, strict=True))


def _rows(tensor: Tensor) -> Tensor:
    """`tensor` [T, H, D] with heads and dims contiguous (any row stride)."""
    heads, dim = tensor.shape[1], tensor.shape[2]
    if tensor.stride(2) == 1 and tensor.stride(1) == dim:
        return tensor
    return tensor.contiguous().view(-1, heads, dim)


@torch.library.custom_op("kubetune_bench::short_attention", mutates_args=())
def short_attention_forward(
    query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor
) -> tuple[Tensor, Tensor]:
    """Attention within each text of packed `query`, `key`, `value` [T, H, D], texts of at
    most `MAX_TILE` tokens: the output [T, H, D] and each row's log-sum-exp [T, H]."""
    query, key, value = _rows(query), _rows(key), _rows(value)
    tokens, heads, dim = query.shape
    out = torch.empty((tokens, heads, dim), dtype=query.dtype, device=query.device)
    lse = torch.empty((tokens, heads), dtype=torch.float32, device=query.device)
    grid = (cu_seqlens.shape[0] - 1, heads)
    for low, tile, warps in _tiles():
        _forward_kernel[grid](
            query,
            key,
            value,
            out,
            lse,
            cu_seqlens,
            query.stride(0),
            key.stride(0),
            value.stride(0),
            dim**-0.5,
            HEADS=heads,
            DIM=dim,
            LOW=low,
            TILE=tile,
            num_warps=warps,
        )
    return out, lse


@short_attention_forward.register_fake
def _forward_shape(
    query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor
) -> tuple[Tensor, Tensor]:
    tokens, heads, dim = query.shape
    return query.new_empty((tokens, heads, dim)), query.new_empty(
        (tokens, heads), dtype=torch.float32
    )


@torch.library.custom_op("kubetune_bench::short_attention_backward", mutates_args=())
def short_attention_backward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    grad_out: Tensor,
    lse: Tensor,
    cu_seqlens: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of `short_attention_forward` with respect to query, key and value."""
    query, key, value, grad_out = _rows(query), _rows(key), _rows(value), _rows(grad_out)
    tokens, heads, dim = query.shape
    grads = [
        torch.empty((tokens, heads, dim), dtype=t.dtype, device=t.device)
        for t in (query, key, value)
    ]
    grid = (cu_seqlens.shape[0] - 1, heads)
    for low, tile, warps in _tiles():
        _backward_kernel[grid](
            query,
            key,
            value,
            out,
            grad_out,
            lse,
            *grads,
            cu_seqlens,
            query.stride(0),
            key.stride(0),
            value.stride(0),
            grad_out.stride(0),
            dim**-0.5,
            HEADS=heads,
            DIM=dim,
            LOW=low,
            TILE=tile,
            num_warps=warps,
        )
    return grads[0], grads[1], grads[2]


@short_attention_backward.register_fake
def _backward_shape(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    grad_out: Tensor,
    lse: Tensor,
    cu_seqlens: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _save(ctx: object, inputs: tuple[Tensor, ...], output: tuple[Tensor, Tensor]) -> None:
    query, key, value, cu_seqlens = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse, cu_seqlens)  # type: ignore[attr-defined]


def _backward(ctx: object, grad_out: Tensor, _grad_lse: Tensor) -> tuple[Tensor | None, ...]:
    query, key, value, out, lse, cu_seqlens = ctx.saved_tensors  # type: ignore[attr-defined]
    grad_query, grad_key, grad_value = short_attention_backward(
        query, key, value, out, grad_out, lse, cu_seqlens
    )
    return grad_query, grad_key, grad_value, None


short_attention_forward.register_autograd(_backward, setup_context=_save)


def short_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    sequence_index: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """`kubetune_trainer.model._attend` through `short_attention_forward` where it applies
    (Triton runs, texts of at most `MAX_TILE` tokens, half-precision inputs on CUDA)."""
    runs = (query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)) or _INTERPRETED
    if not runs or max_length > MAX_TILE:
        return TRAINER_ATTEND(
            query, key, value, sequence_index, position_ids, cu_seqlens, max_length
        )
    return short_attention_forward(query, key, value, cu_seqlens)[0]


TRAINER_ATTEND = model_module._attend
