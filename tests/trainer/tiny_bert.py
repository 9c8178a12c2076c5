"""A two-layer BERT with random weights and a few packed texts: for tests of the packed
path that need a BERT model but not a trained one."""

from __future__ import annotations

import numpy as np
import torch
from transformers import BertConfig, BertModel

from kubetune_trainer.batching import Packed
from kubetune_trainer.model import Encoder


def tiny_encoder() -> Encoder:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return Encoder(BertModel(config), "mean", True)


def packed_texts() -> Packed:
    lengths = np.array([5, 9, 3, 12])
    ids = np.arange(int(lengths.sum())) % 97 + 2
    return Packed.from_arrays(ids, lengths)
