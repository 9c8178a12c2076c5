"""The candidate changes of `bench/candidates.py`, on CPU: each computes what it claims."""

from __future__ import annotations

import pytest
import torch

from bench import candidates
from kubetune_trainer.step import embed
from tests.trainer.tiny_bert import packed_texts, tiny_encoder


def test_no_hidden_dropout_turns_off_the_hidden_dropouts_only() -> None:
    """With the hidden dropouts off, training mode computes what eval mode does (the packed
    path has no attention-probability dropout); the attention's own stays as it was."""
    texts = packed_texts()
    encoder = tiny_encoder()
    candidates.apply(encoder, ["no-hidden-dropout"])
    bert = encoder.transformer
    assert all(layer.attention.self.dropout.p == 0.1 for layer in bert.encoder.layer)
    with torch.no_grad():
        encoder.eval()
        expected = embed(encoder, texts, 64)
        encoder.train()
        assert torch.equal(embed(encoder, texts, 64), expected)
    with pytest.raises(ValueError, match="unknown candidate 'fast'"):
        candidates.apply(encoder, ["fast"])
