"""Gradient clipping folded into the optimizer step: the same update as `clip_grad_norm_`
followed by the step. (The gradient buckets, on two processes, are in `test_step.py`.)"""

from __future__ import annotations

import pytest
import torch

from kubetune_trainer.sync import clip_in_step, gradient_norm


def _parameters(scale: float) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    parameters = []
    for shape in [(3, 5), (5,), (7, 2, 2)]:
        parameter = torch.nn.Parameter(torch.randn(shape, generator=generator))
        parameter.grad = scale * torch.randn(shape, generator=generator)
        parameters.append(parameter)
    return parameters


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "foreach"])
@pytest.mark.parametrize("scale", [10.0, 0.01], ids=["clipped", "within-the-norm"])
def test_clipping_in_the_step_matches_clip_grad_norm_then_step(fused: bool, scale: float) -> None:
    expected = _parameters(scale)
    norm = torch.nn.utils.clip_grad_norm_(expected, max_norm=1.0)
    torch.optim.AdamW(expected, lr=0.1).step()

    got = _parameters(scale)
    grads = [parameter.grad for parameter in got if parameter.grad is not None]
    torch.testing.assert_close(gradient_norm(grads), norm, rtol=0, atol=0)
    optimizer = torch.optim.AdamW(got, lr=0.1, fused=fused)
    clip_in_step(optimizer, grads, gradient_norm(grads), max_norm=1.0)
    optimizer.step()
    for want, have in zip(expected, got, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-6, atol=1e-7)
