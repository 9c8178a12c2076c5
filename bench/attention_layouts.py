"""Attention over packed short texts at the BERT-base shape: which kernel and layout.

Why: FlashAttention's variable-length kernel gives every text its own 128-row tiles, so on
the Debian pairs (anchors of about 12 tokens, positives of about 75) it computes about five
times the attention a text needs, and its backward took about a third of a BERT-base step.
This times the forward and backward of one layer's attention (12 heads of 64, bf16, random
activations) on real batches of 256 pairs (lengths from the model's tokenizer, at most 128),
for:

- FlashAttention's variable-length kernel over the packed tokens (the trainer's before);
- the memory-efficient (CUTLASS) kernel over the packed tokens, with variable lengths, eager
  and compiled with dynamic shapes (64-row tiles);
- texts bin-packed into rows of 128 tokens (first fit, longest first: about 1.6 times the
  needed attention, under 1% padding), scattered there and gathered back, with a
  block-diagonal mask, through SDPA (memory-efficient kernel) or FlexAttention;
- FlexAttention with a document mask over the packed tokens in their order.

Each is checked against the first as ||x - ref|| / ||ref|| for the output and the three
input gradients. Times are CUDA-event medians around each call, so a call whose host work
outlasts its kernels (a small compiled function's guards and autograd wrapper) is timed by
its host work; in the trainer the attention is part of one compiled graph.

    python bench/attention_layouts.py --model DIR --data debian-train.jsonl.gz [--flex]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

HEADS, HEAD_DIM, MAX_LENGTH = 12, 64, 128


def batches(model: Path, data: Path, count: int, size: int) -> list[np.ndarray]:
    """Token counts of the anchors then positives of `count` random batches of `size` pairs."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    with gzip.open(data, "rt") as lines:
        pairs = [json.loads(line) for line in lines]
    random.seed(0)
    out = []
    for _ in range(count):
        chosen = random.sample(pairs, size)
        texts = [pair["anchor"] for pair in chosen] + [pair["positive"] for pair in chosen]
        ids = tokenizer(texts, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        out.append(np.array([len(x) for x in ids]))
    return out


def rows_layout(lengths: np.ndarray, row: int) -> tuple[np.ndarray, np.ndarray]:
    """First fit, longest first, into rows of `row` tokens: where each packed token goes in
    the rows layout, and the layout's document ids (each row's free tail one pad text)."""
    free: list[int] = []
    members: list[list[int]] = []
    for text in np.argsort(-lengths, kind="stable"):
        length = int(lengths[text])
        for r, left in enumerate(free):
            if left >= length:
                free[r] -= length
                members[r].append(int(text))
                break
        else:
            free.append(row - length)
            members.append([int(text)])
    start = np.zeros(len(lengths), dtype=np.int64)
    docs = np.zeros(len(free) * row, dtype=np.int64)
    doc = 0
    for r, texts in enumerate(members):
        filled = r * row
        for text in texts:
            start[text] = filled
            docs[filled : filled + lengths[text]] = doc
            filled += int(lengths[text])
            doc += 1
        docs[filled : (r + 1) * row] = doc
        doc += 1
    destination = np.concatenate([start[t] + np.arange(lengths[t]) for t in range(len(lengths))])
    return destination, docs


def document_mask(doc: Tensor, block: int) -> object:
    """FlexAttention's block mask of `doc[q] == doc[kv]` over N tokens (N a multiple of
    `block`, `doc` ascending): q block i sees the kv blocks from the one holding the first
    token of its first text to the one holding the last token of its last text."""
    from torch.nn.attention.flex_attention import BlockMask

    tokens = doc.shape[0]
    blocks = tokens // block
    first = torch.searchsorted(doc, doc, side="left")
    last = torch.searchsorted(doc, doc, side="right") - 1
    low = first.view(blocks, block)[:, 0] // block
    high = last.view(blocks, block)[:, -1] // block
    # BlockMask takes a full row of kv block indices per q block; the first `counts` count
    indices = (low[:, None] + torch.arange(blocks, device=doc.device)).clamp(max=blocks - 1)

    def same_text(b: Tensor, h: Tensor, q: Tensor, kv: Tensor) -> Tensor:
        return doc[q] == doc[kv]

    return BlockMask.from_kv_blocks(
        (high - low + 1).to(torch.int32).view(1, 1, blocks),
        indices.to(torch.int32).view(1, 1, blocks, blocks),
        BLOCK_SIZE=block,
        mask_mod=same_text,
        seq_lengths=(tokens, tokens),
    )


def flex_document_attention(q: Tensor, k: Tensor, v: Tensor, doc: Tensor) -> Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    mask = document_mask(doc, 128)
    q, k, v = (t.transpose(0, 1).unsqueeze(0) for t in (q, k, v))
    out = flex_attention(q, k, v, block_mask=mask)
    return out.squeeze(0).transpose(0, 1)  # type: ignore[union-attr]


def efficient_varlen(q: Tensor, k: Tensor, v: Tensor, cu: Tensor) -> Tensor:
    return torch.ops.aten._efficient_attention_forward(
        q.unsqueeze(0),
        k.unsqueeze(0),
        v.unsqueeze(0),
        None,
        cu,
        cu,
        MAX_LENGTH,
        MAX_LENGTH,
        0.0,
        0,
        True,
    )[0].squeeze(0)


def sdpa_rows(q: Tensor, k: Tensor, v: Tensor, destination: Tensor, doc: Tensor) -> Tensor:
    size = doc.shape[0]
    qr, kr, vr = (
        t.new_zeros(size, HEADS, HEAD_DIM)
        .index_copy(0, destination, t)
        .view(-1, MAX_LENGTH, HEADS, HEAD_DIM)
        .transpose(1, 2)
        for t in (q, k, v)
    )
    docs = doc.view(-1, MAX_LENGTH)
    mask = (docs[:, :, None] == docs[:, None, :]).unsqueeze(1)
    out = F.scaled_dot_product_attention(qr, kr, vr, attn_mask=mask)
    return out.transpose(1, 2).reshape(size, HEADS, HEAD_DIM).index_select(0, destination)


def flex_rows(q: Tensor, k: Tensor, v: Tensor, destination: Tensor, doc: Tensor) -> Tensor:
    size = doc.shape[0]
    qr, kr, vr = (
        t.new_zeros(size, HEADS, HEAD_DIM).index_copy(0, destination, t) for t in (q, k, v)
    )
    return flex_document_attention(qr, kr, vr, doc).index_select(0, destination)


def flex_packed(q: Tensor, k: Tensor, v: Tensor, doc: Tensor) -> Tensor:
    tokens = q.shape[0]
    pad = doc.shape[0] - tokens
    padded = [torch.cat([t, t.new_zeros(pad, HEADS, HEAD_DIM)]) for t in (q, k, v)]
    return flex_document_attention(*padded, doc)[:tokens]


COMPILED = {
    name: torch.compile(fn, dynamic=True)
    for name, fn in (
        ("efficient", efficient_varlen),
        ("sdpa_rows", sdpa_rows),
        ("flex_rows", flex_rows),
        ("flex_packed", flex_packed),
    )
}


def kernels(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu: Tensor,
    destination: Tensor,
    doc_rows: Tensor,
    doc_packed: Tensor,
    flex: bool,
) -> dict[str, Callable[[], Tensor]]:
    """The variants, each a call on these inputs; the first is the reference."""
    from torch.nn.attention.varlen import varlen_attn

    variants: dict[str, Callable[[], Tensor]] = {
        "flash varlen (before)": lambda: varlen_attn(q, k, v, cu, cu, MAX_LENGTH, MAX_LENGTH),
        "efficient varlen, eager": lambda: efficient_varlen(q, k, v, cu),
        "efficient varlen, compiled": lambda: COMPILED["efficient"](q, k, v, cu),
        "rows of 128, SDPA + mask, compiled": lambda: COMPILED["sdpa_rows"](
            q, k, v, destination, doc_rows
        ),
    }
    if flex:
        variants["rows of 128, flex, compiled"] = lambda: COMPILED["flex_rows"](
            q, k, v, destination, doc_rows
        )
        variants["packed order, flex, compiled"] = lambda: COMPILED["flex_packed"](
            q, k, v, doc_packed
        )
    return variants


def timed(fn: Callable[[], object], repeats: int = 30) -> float:
    """Median milliseconds of `fn`, by CUDA events, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def relative(value: Tensor, reference: Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--flex", action="store_true", help="also time the FlexAttention ones")
    args = parser.parse_args()
    device = torch.device("cuda")
    results: dict[str, list[float]] = {}
    for lengths in batches(args.model, args.data, args.batches, 256):
        tokens = int(lengths.sum())
        cu = torch.tensor(np.concatenate([[0], np.cumsum(lengths)]), dtype=torch.int32)
        cu = cu.to(device)
        destination_np, doc_rows_np = rows_layout(lengths, MAX_LENGTH)
        destination = torch.tensor(destination_np, device=device)
        doc_rows = torch.tensor(doc_rows_np, device=device)
        padded = -(-tokens // 128) * 128
        doc_packed = torch.repeat_interleave(
            torch.arange(len(lengths) + 1, device=device),
            torch.tensor([*lengths, padded - tokens], device=device),
        )
        print(
            f"batch: {tokens} tokens in {len(lengths)} texts; rows of 128: "
            f"{len(doc_rows_np) // 128} ({len(doc_rows_np) - tokens} pad tokens)",
            flush=True,
        )
        torch.manual_seed(0)
        q, k, v, grad = (
            torch.randn(tokens, HEADS, HEAD_DIM, device=device, dtype=torch.bfloat16)
            for _ in range(4)
        )
        inputs = [t.requires_grad_() for t in (q, k, v)]
        variants = kernels(q, k, v, cu, destination, doc_rows, doc_packed, args.flex)
        reference: list[Tensor] = []
        for name, run in variants.items():
            try:
                out = run()
                out.backward(grad)
                got = [out.detach()] + [t.grad for t in inputs]  # type: ignore[misc]
                reference = reference or got
                errors = [relative(x, r) for x, r in zip(got, reference, strict=True)]
                for t in inputs:
                    t.grad = None
                forward = timed(run)
                both = timed(lambda run=run, grad=grad: run().backward(grad))  # type: ignore[misc]
                for t in inputs:
                    t.grad = None
                results.setdefault(name, []).append(both)
                print(
                    f"  {name:<36} fwd {forward:6.3f} ms, fwd+bwd {both:6.3f} ms; rel. error "
                    f"out {errors[0]:.1e}, dq {errors[1]:.1e}, dk {errors[2]:.1e}, "
                    f"dv {errors[3]:.1e}",
                    flush=True,
                )
            except RuntimeError as error:  # report it and go on to the next variant
                print(f"  {name}: FAILED {type(error).__name__}: {str(error)[:400]}", flush=True)
    print("one layer's attention, fwd+bwd ms, median over batches (12 layers: a step's):")
    for name, values in results.items():
        median = statistics.median(values)
        print(f"  {name:<36} {median:6.3f}  (x12: {12 * median:5.1f})")


if __name__ == "__main__":
    main()
