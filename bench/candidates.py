"""Candidate changes to the trainer's packed BERT forward, kept here until a GPU measures them.

Why: a change to the trainer lands with its speed and its quality measured on a GPU, and GPU
time comes in short sessions, some with no GPU at all. Until then a change lives here as a
named candidate that swaps modules of a loaded model, or a function of
`kubetune_trainer.model`, so that one GPU session can measure it beside the trainer as it is:
`bench/trainer_speed.py --candidate NAME` for speed, and the trainer's own command for
quality (`bench/quality_sweep.py` runs `python bench/candidates.py NAMES --config F` for a
variant with candidates). `tests/bench/test_candidates.py` checks on CPU what each computes.

- `bf16-residual`: in training, LayerNorm in float32 arithmetic with its output in autocast's
  dtype. Autocast runs LayerNorm in float32 and returns float32, so BERT's residual stream
  and its gradient are float32, and every elementwise kernel on them (dropout, residual sum,
  normalisation, forward and backward) moves twice the bytes of bf16; the matrix products
  take bf16 anyway.
- `bit-dropout`: in training, hidden dropout whose keep mask comes from a Triton kernel that
  draws 16 bits per element, eight elements per Philox call, and keeps one bit per element
  for the backward. Inductor's dropout makes one Philox call (ten rounds of 32-bit
  multiplies) per element and keeps a byte per element: at the BERT-base shape, 25 dropouts
  of 768 values per token over about 22,500 tokens, some 430 million Philox calls a step.
- `cudnn-attention`: the packed path's attention on CUDA through cuDNN's variable-length
  kernel instead of the memory-efficient one.
- `no-hidden-dropout`: BERT's hidden dropout off, to see what dropout costs in time and in
  quality.

Evaluation runs the model in eval mode, where every candidate computes what the trainer does.

    python bench/candidates.py bf16-residual,bit-dropout --config trial.json
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import Tensor, nn

from kubetune_trainer import model as model_module

DRAW_LEVELS = 1 << 16
"""Each keep draw is 16 bits: the drop probability is rounded to a multiple of 1/65,536."""

BLOCK = 1024


@triton.jit
def _keep_bits_kernel(seed_ptr, bits_ptr, count, threshold, BLOCK: tl.constexpr):
    """Byte i of `bits` holds the keep bits of elements 8i to 8i+7: bit j is set when the j-th
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


@torch.library.custom_op("kubetune_bench::keep_bits", mutates_args=())
def keep_bits(seed: Tensor, elements: int, threshold: int) -> Tensor:
    """Keep bits of `elements` values, eight to a byte (`_keep_bits_kernel`); `seed` is one
    int64 on the device that runs the kernel."""
    bits = torch.empty((elements + 7) // 8, dtype=torch.uint8, device=seed.device)
    grid = (triton.cdiv(bits.numel(), BLOCK),)
    _keep_bits_kernel[grid](seed, bits, bits.numel(), threshold, BLOCK=BLOCK)
    return bits


@keep_bits.register_fake
def _keep_bits_shape(seed: Tensor, elements: int, threshold: int) -> Tensor:
    return seed.new_empty(((elements + 7) // 8,), dtype=torch.uint8)


def bit_dropout(states: Tensor, p: float) -> Tensor:
    """Dropout at rate `p` with a mask from `keep_bits`. The seed comes from torch's generator
    (so `torch.manual_seed` and the saved random state decide the masks), and what the backward
    keeps is the bits: the mask is recomputed from them."""
    seed = torch.randint(0, 1 << 62, (1,), device=states.device)
    bits = keep_bits(seed, states.numel(), round(p * DRAW_LEVELS))
    shifts = torch.arange(8, device=states.device, dtype=torch.uint8)
    keep = ((bits.unsqueeze(1) >> shifts) & 1).view(-1)[: states.numel()].view_as(states)
    return states * keep.to(states.dtype) * (1.0 / (1.0 - p))


_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether `triton.jit` made the kernel for Triton's interpreter (it decides at definition),
which runs it on CPU tensors."""


def _triton_runs_on(states: Tensor) -> bool:
    return states.is_cuda or _INTERPRETED


class BitDropout(nn.Dropout):
    """`nn.Dropout` through `bit_dropout` in training where Triton runs (CUDA, or its
    interpreter)."""

    def forward(self, states: Tensor) -> Tensor:
        if not (self.training and self.p > 0 and _triton_runs_on(states)):
            return super().forward(states)
        return bit_dropout(states, self.p)


class AutocastOutputLayerNorm(nn.LayerNorm):
    """`nn.LayerNorm` that, in training under autocast, returns autocast's dtype (computing in
    float32) instead of float32."""

    def forward(self, states: Tensor) -> Tensor:
        device = states.device.type
        if not (self.training and torch.is_autocast_enabled(device)):
            return super().forward(states)
        with torch.autocast(device, enabled=False):
            normed = F.layer_norm(
                states.float(), self.normalized_shape, self.weight, self.bias, self.eps
            )
        return normed.to(torch.get_autocast_dtype(device))


def cudnn_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    sequence_index: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """`kubetune_trainer.model._attend`, through cuDNN's variable-length kernel on CUDA."""
    if not (query.is_cuda and query.dtype in (torch.bfloat16, torch.float16)):
        return TRAINER_ATTEND(
            query, key, value, sequence_index, position_ids, cu_seqlens, max_length
        )
    return torch.ops.aten._cudnn_attention_forward(
        query, key, value, None, cu_seqlens, cu_seqlens, max_length, max_length, True
    )[0]


TRAINER_ATTEND = model_module._attend


def _hidden_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The modules of a BERT encoder that hold its hidden dropouts and LayerNorms: the
    embeddings, and each layer's attention output and output."""
    bert = model_module._bert(encoder.transformer)
    if bert is None:
        raise ValueError("the candidates apply to BERT models only")
    blocks = [bert.embeddings]
    for layer in bert.encoder.layer:
        blocks += [layer.attention.output, layer.output]
    return blocks


def _swap_class(modules: Iterable[nn.Module], kind: type[nn.Module], new: type) -> None:
    """Make each module of class `kind` an instance of its subclass `new`, in place, so that
    its parameters (and everything holding them: optimizer, peft) stay as they are."""
    for module in modules:
        if type(module) is kind:
            module.__class__ = new


def _bf16_residual(encoder: nn.Module) -> None:
    norms = (block.LayerNorm for block in _hidden_blocks(encoder))
    _swap_class(norms, nn.LayerNorm, AutocastOutputLayerNorm)


def _bit_dropout(encoder: nn.Module) -> None:
    _swap_class((block.dropout for block in _hidden_blocks(encoder)), nn.Dropout, BitDropout)


def _cudnn_attention(encoder: nn.Module) -> None:
    model_module._attend = cudnn_attention


def _no_hidden_dropout(encoder: nn.Module) -> None:
    for block in _hidden_blocks(encoder):
        block.dropout.p = 0.0


CANDIDATES: dict[str, Callable[[nn.Module], None]] = {
    "bf16-residual": _bf16_residual,
    "bit-dropout": _bit_dropout,
    "cudnn-attention": _cudnn_attention,
    "no-hidden-dropout": _no_hidden_dropout,
}


def apply(encoder: nn.Module, names: Iterable[str]) -> None:
    """Put the named candidates into `encoder` (a `kubetune_trainer.model.Encoder` of a BERT
    model) and the trainer's packed path."""
    for name in names:
        if name not in CANDIDATES:
            raise ValueError(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
        CANDIDATES[name](encoder)


def main(argv: list[str]) -> int:
    """The trainer's command (`python -m kubetune_trainer ARGS`) with the candidates of the
    first argument (comma-separated) in every model it loads."""
    from kubetune_trainer import cli, trial

    names = [name for name in argv[0].split(",") if name]
    load = trial.load_model

    def load_with_candidates(*args: object, **kwargs: object) -> model_module.EmbeddingModel:
        loaded = load(*args, **kwargs)  # type: ignore[arg-type]
        apply(loaded.encoder, names)
        return loaded

    trial.load_model = load_with_candidates
    return cli.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
