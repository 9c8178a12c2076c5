"""Attention over packed short texts with each text's whole attention in one tile (Triton).

Why: in the profile of a BERT-base step, the memory-efficient kernel's variable-length
attention took 1.6 ms forward and 3.5 ms backward (12 layers), a sixth of the step, on the
Debian pairs' short texts (12 and 75 tokens on average, at most 128 in the speed benchmark).
Here one program handles one text and one head: it loads the text's queries, keys and
values (at most 128 rows of 64), computes the whole score matrix in registers, and, in the
backward, recomputes it and writes the three input gradients, with no atomics and no second
pass. Texts are grouped by the tile that fits them (16, 32, 64 or 128 rows): one launch per
tile size over every (text, head), in which the texts of other sizes return at once, so the
grid needs no count from the device.

Where the query, key and value come from one stacked projection (full fine-tuning:
`kubetune_trainer.model._stacked_qkv`), the kernels take it as it is and the backward writes
the three gradients into one tensor of its shape. With separate gradients, as the
memory-efficient kernel returns them, a copy puts them together: in the profile of the
trainer's BERT-base step that copy (`triton_poi_fused_add_select_backward_squeeze`) took
0.62 ms a step.

Texts longer than `MAX_TILE` tokens (at the defaults, training truncates at the model's 256)
go through blocks of `LONG_BLOCK` rows with a running softmax, and a backward in which each
program writes the key and value gradients of its block and then its query gradient, so
again with no atomics. Nothing here runs on CPU unless Triton's interpreter is on
(`TRITON_INTERPRET=1`).
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
LONG_BLOCK = 64
"""Rows per block for texts over `MAX_TILE` tokens."""

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

WARPS = (2, 4, 8, 16)
"""On a GPU, Triton times each tile kernel at each of these warp counts on its first call for
a tile size (and heads and head size), and keeps the fastest: a tile of 128 rows holds
128 x 128 float32 scores, and with too few warps its registers spill. A tile gets at most one
warp per 8 rows. (The tile kernels have no loop, so pipeline stages would change nothing.)"""


def _fitting_warps(
    configs: list[triton.Config], named_args: dict[str, object], **kwargs: object
) -> list[triton.Config]:
    tile = int(kwargs.get("TILE", named_args.get("TILE")))  # type: ignore[call-overload]
    return [config for config in configs if config.num_warps <= max(2, tile // 8)]


def _tuned(kernel: triton.JITFunction) -> triton.JITFunction:
    """`kernel` autotuned over `WARPS` per tile size; as it is under Triton's interpreter,
    which ignores warps and whose timings would be of the interpreter."""
    if _INTERPRETED:
        return kernel
    configs = [triton.Config({}, num_warps=warps) for warps in WARPS]
    return triton.autotune(
        configs,
        key=["TILE", "HEADS", "DIM"],
        prune_configs_by={"early_config_prune": _fitting_warps},
    )(kernel)


@triton.jit
def _load_rows(ptr, stride, start, first, length, head, DIM: tl.constexpr, TILE: tl.constexpr):
    """One head's rows `first` to `first + TILE` of a text, [TILE, DIM], zero past its
    `length`."""
    rows = first + tl.arange(0, TILE)
    offsets = (start + rows)[:, None] * stride + head * DIM + tl.arange(0, DIM)[None, :]
    return tl.load(ptr + offsets, mask=(rows < length)[:, None], other=0.0)


@triton.jit
def _store_rows(
    ptr, stride, values, start, first, length, head, DIM: tl.constexpr, TILE: tl.constexpr
):
    """Store one head's rows `first` to `first + TILE` of a text (`_load_rows`' layout)."""
    rows = first + tl.arange(0, TILE)
    offsets = (start + rows)[:, None] * stride + head * DIM + tl.arange(0, DIM)[None, :]
    tl.store(ptr + offsets, values.to(ptr.dtype.element_ty), mask=(rows < length)[:, None])


@_tuned
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
        q = _load_rows(q_ptr, q_stride, start, 0, length, head, DIM, TILE)
        k = _load_rows(k_ptr, k_stride, start, 0, length, head, DIM, TILE)
        v = _load_rows(v_ptr, v_stride, start, 0, length, head, DIM, TILE)
        rows = tl.arange(0, TILE)
        valid = rows < length
        scores = tl.dot(q, tl.trans(k)) * scale
        scores = tl.where(valid[None, :], scores, float("-inf"))
        peak = tl.max(scores, 1)
        weights = tl.exp(scores - peak[:, None])
        total = tl.sum(weights, 1)
        out = tl.dot(weights.to(v.dtype), v) / total[:, None]
        _store_rows(out_ptr, HEADS * DIM, out, start, 0, length, head, DIM, TILE)
        tl.store(lse_ptr + (start + rows) * HEADS + head, peak + tl.log(total), mask=valid)


@_tuned
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
    grad_stride,
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
        q = _load_rows(q_ptr, q_stride, start, 0, length, head, DIM, TILE)
        k = _load_rows(k_ptr, k_stride, start, 0, length, head, DIM, TILE)
        v = _load_rows(v_ptr, v_stride, start, 0, length, head, DIM, TILE)
        out = _load_rows(out_ptr, HEADS * DIM, start, 0, length, head, DIM, TILE)
        grad_out = _load_rows(grad_out_ptr, grad_out_stride, start, 0, length, head, DIM, TILE)
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
        _store_rows(grad_q_ptr, grad_stride, grad_q, start, 0, length, head, DIM, TILE)
        _store_rows(grad_k_ptr, grad_stride, grad_k, start, 0, length, head, DIM, TILE)
        _store_rows(grad_v_ptr, grad_stride, grad_v, start, 0, length, head, DIM, TILE)


@triton.jit
def _long_forward_kernel(
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
    BLOCK: tl.constexpr,
):
    """Texts over `LOW` tokens: one program per text, head and block of `BLOCK` query rows,
    over the key blocks with a running softmax."""
    text = tl.program_id(0)
    head = tl.program_id(1)
    first = tl.program_id(2) * BLOCK
    start = tl.load(cu_ptr + text)
    length = tl.load(cu_ptr + text + 1) - start
    if (length > LOW) & (first < length):
        q = _load_rows(q_ptr, q_stride, start, first, length, head, DIM, BLOCK)
        peak = tl.full((BLOCK,), float("-inf"), tl.float32)
        total = tl.zeros((BLOCK,), tl.float32)
        acc = tl.zeros((BLOCK, DIM), tl.float32)
        for key_first in range(0, length, BLOCK):
            k = _load_rows(k_ptr, k_stride, start, key_first, length, head, DIM, BLOCK)
            v = _load_rows(v_ptr, v_stride, start, key_first, length, head, DIM, BLOCK)
            scores = tl.dot(q, tl.trans(k)) * scale
            columns = key_first + tl.arange(0, BLOCK)
            scores = tl.where((columns < length)[None, :], scores, float("-inf"))
            new_peak = tl.maximum(peak, tl.max(scores, 1))
            rescale = tl.exp(peak - new_peak)
            weights = tl.exp(scores - new_peak[:, None])
            total = total * rescale + tl.sum(weights, 1)
            acc = acc * rescale[:, None] + tl.dot(weights.to(v.dtype), v)
            peak = new_peak
        _store_rows(
            out_ptr, HEADS * DIM, acc / total[:, None], start, first, length, head, DIM, BLOCK
        )
        rows = first + tl.arange(0, BLOCK)
        tl.store(lse_ptr + (start + rows) * HEADS + head, peak + tl.log(total), mask=rows < length)


@triton.jit
def _long_rows_for_backward(
    q_ptr,
    out_ptr,
    grad_out_ptr,
    lse_ptr,
    q_stride,
    grad_out_stride,
    start,
    first,
    length,
    head,
    HEADS: tl.constexpr,
    DIM: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """A query block's rows, output gradient, log-sum-exp and sum of out * grad_out."""
    q = _load_rows(q_ptr, q_stride, start, first, length, head, DIM, BLOCK)
    out = _load_rows(out_ptr, HEADS * DIM, start, first, length, head, DIM, BLOCK)
    grad_out = _load_rows(grad_out_ptr, grad_out_stride, start, first, length, head, DIM, BLOCK)
    rows = first + tl.arange(0, BLOCK)
    lse = tl.load(lse_ptr + (start + rows) * HEADS + head, mask=rows < length, other=0.0)
    delta = tl.sum(out.to(tl.float32) * grad_out.to(tl.float32), 1)
    return q, grad_out, lse, delta


@triton.jit
def _long_weights(q, k, lse, scale, query_first, key_first, length, BLOCK: tl.constexpr):
    """The attention weights of a query block on a key block, zero outside the text."""
    rows = query_first + tl.arange(0, BLOCK)
    columns = key_first + tl.arange(0, BLOCK)
    weights = tl.exp(tl.dot(q, tl.trans(k)) * scale - lse[:, None])
    return tl.where((rows < length)[:, None] & (columns < length)[None, :], weights, 0.0)


@triton.jit
def _long_backward_kernel(
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
    grad_stride,
    scale,
    HEADS: tl.constexpr,
    DIM: tl.constexpr,
    LOW: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Texts over `LOW` tokens: one program per text, head and block of `BLOCK` rows, which
    writes the key and value gradients of its rows (over the query blocks) and the query
    gradient of its rows (over the key blocks): no atomics."""
    text = tl.program_id(0)
    head = tl.program_id(1)
    first = tl.program_id(2) * BLOCK
    start = tl.load(cu_ptr + text)
    length = tl.load(cu_ptr + text + 1) - start
    if (length > LOW) & (first < length):
        k = _load_rows(k_ptr, k_stride, start, first, length, head, DIM, BLOCK)
        v = _load_rows(v_ptr, v_stride, start, first, length, head, DIM, BLOCK)
        grad_k = tl.zeros((BLOCK, DIM), tl.float32)
        grad_v = tl.zeros((BLOCK, DIM), tl.float32)
        for query_first in range(0, length, BLOCK):
            q, grad_out, lse, delta = _long_rows_for_backward(
                q_ptr,
                out_ptr,
                grad_out_ptr,
                lse_ptr,
                q_stride,
                grad_out_stride,
                start,
                query_first,
                length,
                head,
                HEADS,
                DIM,
                BLOCK,
            )
            weights = _long_weights(q, k, lse, scale, query_first, first, length, BLOCK)
            grad_v += tl.dot(tl.trans(weights.to(v.dtype)), grad_out)
            grad_scores = weights * (tl.dot(grad_out, tl.trans(v)) - delta[:, None])
            grad_k += tl.dot(tl.trans(grad_scores.to(q.dtype)), q)
        _store_rows(grad_k_ptr, grad_stride, grad_k * scale, start, first, length, head, DIM, BLOCK)
        _store_rows(grad_v_ptr, grad_stride, grad_v, start, first, length, head, DIM, BLOCK)
        q, grad_out, lse, delta = _long_rows_for_backward(
            q_ptr,
            out_ptr,
            grad_out_ptr,
            lse_ptr,
            q_stride,
            grad_out_stride,
            start,
            first,
            length,
            head,
            HEADS,
            DIM,
            BLOCK,
        )
        grad_q = tl.zeros((BLOCK, DIM), tl.float32)
        for key_first in range(0, length, BLOCK):
            k = _load_rows(k_ptr, k_stride, start, key_first, length, head, DIM, BLOCK)
            v = _load_rows(v_ptr, v_stride, start, key_first, length, head, DIM, BLOCK)
            weights = _long_weights(q, k, lse, scale, first, key_first, length, BLOCK)
            grad_scores = weights * (tl.dot(grad_out, tl.trans(v)) - delta[:, None])
            grad_q += tl.dot(grad_scores.to(q.dtype), k)
        _store_rows(grad_q_ptr, grad_stride, grad_q * scale, start, first, length, head, DIM, BLOCK)


def _tiles() -> list[tuple[int, int]]:
    """(lowest length excluded, tile) per launch."""
    return list(zip((0, *TILES[:-1]), TILES, strict=True))


def _rows(tensor: Tensor) -> Tensor:
    """`tensor` [T, H, D] with heads and dims contiguous (any row stride)."""
    heads, dim = tensor.shape[1], tensor.shape[2]
    if tensor.stride(2) == 1 and tensor.stride(1) == dim:
        return tensor
    return tensor.contiguous().view(-1, heads, dim)


def _runs(tensor: Tensor) -> bool:
    """Whether the kernels run on `tensor`: half precision on CUDA, or Triton's interpreter."""
    return (tensor.is_cuda and tensor.dtype in (torch.bfloat16, torch.float16)) or _INTERPRETED


def _launch_forward(
    query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_length: int
) -> tuple[Tensor, Tensor]:
    query, key, value = _rows(query), _rows(key), _rows(value)
    tokens, heads, dim = query.shape
    out = torch.empty((tokens, heads, dim), dtype=query.dtype, device=query.device)
    lse = torch.empty((tokens, heads), dtype=torch.float32, device=query.device)
    texts = cu_seqlens.shape[0] - 1
    arguments = (query, key, value, out, lse, cu_seqlens)
    strides = (query.stride(0), key.stride(0), value.stride(0), dim**-0.5)
    for low, tile in _tiles():
        _forward_kernel[(texts, heads)](
            *arguments, *strides, HEADS=heads, DIM=dim, LOW=low, TILE=tile
        )
    if max_length > MAX_TILE:
        _long_forward_kernel[(texts, heads, triton.cdiv(max_length, LONG_BLOCK))](
            *arguments, *strides, HEADS=heads, DIM=dim, LOW=MAX_TILE, BLOCK=LONG_BLOCK
        )
    return out, lse


def _launch_backward(
    inputs: tuple[Tensor, Tensor, Tensor],
    out: Tensor,
    grad_out: Tensor,
    lse: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
    grads: tuple[Tensor, Tensor, Tensor],
) -> None:
    """Write the gradients of query, key and value into `grads`: [T, H, D] each, heads and
    dims contiguous, one row stride for the three."""
    query, key, value = (_rows(tensor) for tensor in inputs)
    grad_out = _rows(grad_out)
    heads, dim = query.shape[1:]
    texts = cu_seqlens.shape[0] - 1
    arguments = (query, key, value, out, grad_out, lse, *grads, cu_seqlens)
    strides = (
        query.stride(0),
        key.stride(0),
        value.stride(0),
        grad_out.stride(0),
        grads[0].stride(0),
        dim**-0.5,
    )
    for low, tile in _tiles():
        _backward_kernel[(texts, heads)](
            *arguments, *strides, HEADS=heads, DIM=dim, LOW=low, TILE=tile
        )
    if max_length > MAX_TILE:
        _long_backward_kernel[(texts, heads, triton.cdiv(max_length, LONG_BLOCK))](
            *arguments, *strides, HEADS=heads, DIM=dim, LOW=MAX_TILE, BLOCK=LONG_BLOCK
        )


def _unstack(stacked: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return stacked[:, 0], stacked[:, 1], stacked[:, 2]


def _attention_shapes(tokens: int, heads: int, dim: int, like: Tensor) -> tuple[Tensor, Tensor]:
    return like.new_empty((tokens, heads, dim)), like.new_empty(
        (tokens, heads), dtype=torch.float32
    )


@torch.library.custom_op("kubetune_bench::short_attention", mutates_args=())
def short_attention_forward(
    query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_length: int
) -> tuple[Tensor, Tensor]:
    """Attention within each text of packed `query`, `key`, `value` [T, H, D], texts of at
    most `max_length` tokens: the output [T, H, D] and each row's log-sum-exp [T, H]."""
    return _launch_forward(query, key, value, cu_seqlens, max_length)


@short_attention_forward.register_fake
def _forward_shape(
    query: Tensor, key: Tensor, value: Tensor, cu_seqlens: Tensor, max_length: int
) -> tuple[Tensor, Tensor]:
    return _attention_shapes(*query.shape, like=query)


@torch.library.custom_op("kubetune_bench::short_attention_backward", mutates_args=())
def short_attention_backward(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    grad_out: Tensor,
    lse: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients of `short_attention_forward` with respect to query, key and value."""
    grads = (
        torch.empty(query.shape, dtype=query.dtype, device=query.device),
        torch.empty(key.shape, dtype=key.dtype, device=key.device),
        torch.empty(value.shape, dtype=value.dtype, device=value.device),
    )
    _launch_backward((query, key, value), out, grad_out, lse, cu_seqlens, max_length, grads)
    return grads


@short_attention_backward.register_fake
def _backward_shape(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    out: Tensor,
    grad_out: Tensor,
    lse: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> tuple[Tensor, Tensor, Tensor]:
    return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


def _save(ctx: object, inputs: tuple[Tensor, ...], output: tuple[Tensor, Tensor]) -> None:
    query, key, value, cu_seqlens, max_length = inputs
    out, lse = output
    ctx.save_for_backward(query, key, value, out, lse, cu_seqlens)  # type: ignore[attr-defined]
    ctx.max_length = max_length  # type: ignore[attr-defined]


def _backward(ctx: object, grad_out: Tensor, _grad_lse: Tensor) -> tuple[Tensor | None, ...]:
    query, key, value, out, lse, cu_seqlens = ctx.saved_tensors  # type: ignore[attr-defined]
    grad_query, grad_key, grad_value = short_attention_backward(
        query,
        key,
        value,
        out,
        grad_out,
        lse,
        cu_seqlens,
        ctx.max_length,  # type: ignore[attr-defined]
    )
    return grad_query, grad_key, grad_value, None, None


short_attention_forward.register_autograd(_backward, setup_context=_save)


@torch.library.custom_op("kubetune_bench::short_attention_stacked", mutates_args=())
def short_attention_stacked(
    stacked: Tensor, cu_seqlens: Tensor, max_length: int
) -> tuple[Tensor, Tensor]:
    """`short_attention_forward` of the query, key and value stacked in one [T, 3, H, D]
    tensor (as `kubetune_trainer.model._stacked_qkv` projects them)."""
    return _launch_forward(*_unstack(stacked), cu_seqlens, max_length)


@short_attention_stacked.register_fake
def _stacked_shape(stacked: Tensor, cu_seqlens: Tensor, max_length: int) -> tuple[Tensor, Tensor]:
    tokens, _, heads, dim = stacked.shape
    return _attention_shapes(tokens, heads, dim, like=stacked)


@torch.library.custom_op("kubetune_bench::short_attention_stacked_backward", mutates_args=())
def short_attention_stacked_backward(
    stacked: Tensor,
    out: Tensor,
    grad_out: Tensor,
    lse: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """The gradient of `short_attention_stacked` with respect to the stacked input, written
    by the kernels in place: the three gradients need no copy into one tensor."""
    grad = torch.empty(stacked.shape, dtype=stacked.dtype, device=stacked.device)
    _launch_backward(_unstack(stacked), out, grad_out, lse, cu_seqlens, max_length, _unstack(grad))
    return grad


@short_attention_stacked_backward.register_fake
def _stacked_backward_shape(stacked: Tensor, *_: object) -> Tensor:
    return torch.empty(stacked.shape, dtype=stacked.dtype, device=stacked.device)


def _save_stacked(ctx: object, inputs: tuple[Tensor, ...], output: tuple[Tensor, Tensor]) -> None:
    stacked, cu_seqlens, max_length = inputs
    out, lse = output
    ctx.save_for_backward(stacked, out, lse, cu_seqlens)  # type: ignore[attr-defined]
    ctx.max_length = max_length  # type: ignore[attr-defined]


def _stacked_backward(
    ctx: object, grad_out: Tensor, _grad_lse: Tensor
) -> tuple[Tensor | None, ...]:
    stacked, out, lse, cu_seqlens = ctx.saved_tensors  # type: ignore[attr-defined]
    grad = short_attention_stacked_backward(
        stacked,
        out,
        grad_out,
        lse,
        cu_seqlens,
        ctx.max_length,  # type: ignore[attr-defined]
    )
    return grad, None, None


short_attention_stacked.register_autograd(_stacked_backward, setup_context=_save_stacked)


def short_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    sequence_index: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """`kubetune_trainer.model._attend` through `short_attention_forward` where the kernels
    run (`_runs`)."""
    if not _runs(query):
        return TRAINER_ATTEND(
            query, key, value, sequence_index, position_ids, cu_seqlens, max_length
        )
    return short_attention_forward(query, key, value, cu_seqlens, max_length)[0]


def self_attention(
    attention: torch.nn.Module,
    states: Tensor,
    sequence_index: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """`kubetune_trainer.model._self_attention` with the attention through this module's
    kernels: on the stacked projection where there is one (`short_attention_stacked`), else
    on the separate ones (LoRA-wrapped projections; `short_attention`)."""
    stacked = model_module._stacked_qkv(attention, states)
    if stacked is None:
        query, key, value = model_module._project_qkv(attention, states)
        return short_attention(
            query, key, value, sequence_index, position_ids, cu_seqlens, max_length
        )
    if not _runs(stacked):
        return TRAINER_ATTEND(
            *_unstack(stacked), sequence_index, position_ids, cu_seqlens, max_length
        )
    return short_attention_stacked(stacked, cu_seqlens, max_length)[0]


TRAINER_ATTEND = model_module._attend
