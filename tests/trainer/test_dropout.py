"""The packed path's hidden dropout (`kubetune_trainer.dropout`) on CPU.

The keep-bit kernel runs through Triton's interpreter, which runs Triton kernels on CPU
tensors (`TRITON_INTERPRET=1`, set in tests/conftest.py before Triton is imported).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kubetune_trainer import dropout as dropout_module
from kubetune_trainer.dropout import DRAW_LEVELS, bit_dropout, dropout, keep_bits


def keep_mask(seed: int, values: int, p: float) -> torch.Tensor:
    bits = keep_bits(torch.tensor([seed]), values, round(p * DRAW_LEVELS))
    shifts = torch.arange(8, dtype=torch.uint8)
    return ((bits.unsqueeze(1) >> shifts) & 1).view(-1)[:values].bool()


def test_keep_bits_keep_each_value_with_probability_one_minus_p_and_follow_the_seed() -> None:
    values = 8 * 40_000
    mask = keep_mask(7, values, 0.1)
    # 320,000 draws: the mean's standard deviation is 0.0005
    assert abs(mask.float().mean().item() - 0.9) < 0.003
    # every one of a byte's eight bits (a different 16-bit half of Philox's output)
    for rate in mask.view(-1, 8).float().mean(0):
        assert abs(rate.item() - 0.9) < 0.006
    assert torch.equal(mask, keep_mask(7, values, 0.1))
    assert (mask != keep_mask(8, values, 0.1)).float().mean() > 0.1
    # a count that is no multiple of 8, and rate 0.5
    odd = keep_mask(7, 8 * 1000 + 3, 0.5)
    assert odd.shape == (8003,) and abs(odd.float().mean().item() - 0.5) < 0.03


def test_bit_dropout_scales_what_it_keeps_and_its_gradient_is_the_same_mask() -> None:
    states = torch.randn(600, 32, requires_grad=True)
    torch.manual_seed(0)
    dropped = bit_dropout(states, 0.25)
    kept = dropped != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(dropped[kept], states.detach()[kept] / 0.75)
    dropped.sum().backward()
    torch.testing.assert_close(states.grad, kept.float() / 0.75)
    # the generator's state decides the mask
    torch.manual_seed(0)
    assert torch.equal(bit_dropout(states, 0.25) != 0, kept)


def test_bit_dropout_compiles_with_dynamic_shapes() -> None:
    """Under `torch.compile` the kernel is an opaque operator: its shape comes from the fake
    implementation, also for a symbolic count of values."""
    compiled = torch.compile(bit_dropout, backend="aot_eager", dynamic=True)
    for tokens in (100, 173):
        states = torch.randn(tokens, 16, requires_grad=True)
        dropped = compiled(states, 0.1)
        dropped.sum().backward()
        kept = dropped != 0
        torch.testing.assert_close(states.grad, kept.float() / 0.9)


def test_dropout_is_the_identity_out_of_training_and_the_kernel_on_kernel_devices_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    states = torch.randn(64, 16)
    assert dropout(states, 0.1, training=False) is states
    assert dropout(states, 0.0, training=True) is states
    torch.manual_seed(3)
    plain = dropout(states, 0.1, training=True)
    torch.manual_seed(3)
    torch.testing.assert_close(plain, F.dropout(states, 0.1, training=True))
    monkeypatch.setattr(dropout_module, "KERNEL_DEVICES", {"cuda", "cpu"})
    torch.manual_seed(3)
    with_bits = dropout(states, 0.1, training=True)
    torch.manual_seed(3)
    torch.testing.assert_close(with_bits, bit_dropout(states, 0.1))
    assert not torch.equal(plain, with_bits)
