"""The candidate changes of `bench/candidates.py`, on CPU: each computes what it claims, and
leaves evaluation (eval mode) exactly as the trainer has it.

The keep-bit kernel runs through Triton's interpreter, which runs Triton kernels on CPU
tensors (`TRITON_INTERPRET=1`, set in tests/conftest.py before Triton is imported).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertModel

from bench import candidates
from kubetune_trainer.batching import Packed
from kubetune_trainer.model import Encoder
from kubetune_trainer.step import embed


def keep_mask(seed: int, elements: int, p: float) -> torch.Tensor:
    bits = candidates.keep_bits(torch.tensor([seed]), elements, round(p * candidates.DRAW_LEVELS))
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((bits.unsqueeze(1) >> shifts) & 1).view(-1)[:elements].bool()


def test_keep_bits_keep_each_value_with_probability_one_minus_p_and_follow_the_seed() -> None:
    elements = 8 * 40_000
    mask = keep_mask(7, elements, 0.1)
    # 320,000 draws: the mean's standard deviation is 0.0005
    assert abs(mask.float().mean().item() - 0.9) < 0.003
    # every one of a byte's eight bits (a different 16-bit half of Philox's output)
    for rate in mask.view(-1, 8).float().mean(0):
        assert abs(rate.item() - 0.9) < 0.006
    assert torch.equal(mask, keep_mask(7, elements, 0.1))
    assert (mask != keep_mask(8, elements, 0.1)).float().mean() > 0.1
    # a count that is no multiple of 8, and rate 0.5
    odd = keep_mask(7, 8 * 1000 + 3, 0.5)
    assert odd.shape == (8003,) and abs(odd.float().mean().item() - 0.5) < 0.03


def test_bit_dropout_scales_what_it_keeps_and_its_gradient_is_the_same_mask() -> None:
    states = torch.randn(600, 32, requires_grad=True)
    torch.manual_seed(0)
    dropped = candidates.bit_dropout(states, 0.25)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(dropped[kept], states.detach()[kept] / 0.75)
    dropped.sum().backward()
    torch.testing.assert_close(states.grad, kept.float() / 0.75)
    # the generator's state decides the mask
    torch.manual_seed(0)
    assert torch.equal(candidates.bit_dropout(states, 0.25) != 0, kept)


def test_bit_dropout_compiles_with_dynamic_shapes() -> None:
    """Under `torch.compile` the kernel is an opaque operator: its shape comes from the fake
    implementation, also for a symbolic element count."""
    compiled = torch.compile(candidates.bit_dropout, backend="aot_eager", dynamic=True)
    for tokens in (100, 173):
        states = torch.randn(tokens, 16, requires_grad=True)
        dropped = compiled(states, 0.1)
        dropped.sum().backward()
        kept = dropped != 0
        torch.testing.assert_close(states.grad, kept.float() / 0.9)


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


def test_candidates_swap_the_hidden_norms_and_dropouts_in_place() -> None:
    encoder = tiny_encoder()
    parameters = {name: id(p) for name, p in encoder.named_parameters()}
    candidates.apply(encoder, ["bf16-residual", "bit-dropout"])
    bert = encoder.transformer
    blocks = [bert.embeddings] + [
        block for layer in bert.encoder.layer for block in (layer.attention.output, layer.output)
    ]
    assert all(type(b.LayerNorm) is candidates.AutocastOutputLayerNorm for b in blocks)
    assert all(type(b.dropout) is candidates.BitDropout for b in blocks)
    # the attention probabilities' dropout is not the packed path's, and stays
    assert all(type(layer.attention.self.dropout) is nn.Dropout for layer in bert.encoder.layer)
    assert parameters == {name: id(p) for name, p in encoder.named_parameters()}
    with pytest.raises(ValueError, match="unknown candidate 'fast'"):
        candidates.apply(encoder, ["fast"])


def test_in_eval_mode_the_candidates_compute_what_the_trainer_does() -> None:
    texts = packed_texts()
    plain, changed = tiny_encoder(), tiny_encoder()
    candidates.apply(changed, ["bf16-residual", "bit-dropout"])
    for encoder in (plain, changed):
        encoder.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(embed(changed, texts, 64), embed(plain, texts, 64))


def test_the_bf16_residual_stream_computes_the_float32_function_to_bf16_precision() -> None:
    """In training, with dropout off: the residual stream is bf16 under autocast, and the
    embeddings stay within bf16's error of the float32 forward."""
    texts = packed_texts()
    reference, changed = tiny_encoder(), tiny_encoder()
    candidates.apply(changed, ["bf16-residual", "no-hidden-dropout"])
    reference.eval()
    changed.train()
    norm = changed.transformer.embeddings.LayerNorm
    states = torch.randn(7, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert norm(states).dtype == torch.bfloat16
        embeddings = embed(changed, texts, 64)
    torch.testing.assert_close(
        norm(states), F.layer_norm(states, (32,), norm.weight, norm.bias, norm.eps)
    )
    with torch.no_grad():
        expected = embed(reference, texts, 64)
    error = (embeddings.float() - expected).norm() / expected.norm()
    assert 0 < error < 2e-2


def test_bit_dropout_in_the_packed_forward_moves_the_embeddings_as_torch_dropout_does() -> None:
    """Training mode: the hidden dropouts run through the keep-bit kernel (other masks than
    PyTorch's own dropout draws from the same seed), the embeddings move from the
    dropout-free ones about as much as with PyTorch's dropout, and the seed replays them."""
    texts = packed_texts()
    encoder = tiny_encoder()
    with torch.no_grad():
        encoder.eval()
        still = embed(encoder, texts, 64)
        encoder.train()
        torch.manual_seed(1)
        with_torch = embed(encoder, texts, 64)
        candidates.apply(encoder, ["bit-dropout"])
        torch.manual_seed(1)
        with_bits = embed(encoder, texts, 64)
        torch.manual_seed(1)
        again = embed(encoder, texts, 64)
    assert not torch.allclose(with_bits, with_torch)
    moved = [(x - still).norm() / still.norm() for x in (with_bits, with_torch)]
    assert 0.3 < moved[0] / moved[1] < 3
    assert torch.equal(with_bits, again)
