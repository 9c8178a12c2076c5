"""The trainer's command with BERT's attention-probability dropout in the packed path.

Why: the trainer's packed forward applies no dropout to the attention probabilities (PyTorch's
variable-length attention has none), while sentence-transformers' trainer, running the Hugging
Face forward, does. `bench/quality_sweep.py` runs this instead of `python -m kubetune_trainer`
to measure what that difference does to quality. It swaps the packed path's attention for
FlashAttention's aten kernel with dropout at `ATTENTION_DROPOUT` (default 0.1, the rate in
all-MiniLM-L6-v2's config) in training forwards, those with gradients on; evaluation runs the
Hugging Face forward and is unchanged.

    python bench/attention_dropout.py --config trial.json
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from kubetune_trainer import model
from kubetune_trainer.cli import main

RATE = float(os.environ.get("ATTENTION_DROPOUT", "0.1"))


def attend_with_dropout(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    sequence_index: Tensor,
    position_ids: Tensor,
    cu_seqlens: Tensor,
    max_length: int,
) -> Tensor:
    """`kubetune_trainer.model._attend` on CUDA as it was before 2026-12-04 (FlashAttention's
    variable-length kernel), plus dropout; the aten operator has its own backward, which
    replays the dropout mask from the random state its forward returns."""
    rate = RATE if torch.is_grad_enabled() else 0.0
    return torch.ops.aten._flash_attention_forward(
        query, key, value, cu_seqlens, cu_seqlens, max_length, max_length, rate, False, False
    )[0]


if __name__ == "__main__":
    model._attend = attend_with_dropout
    raise SystemExit(main())
