"""The candidate changes of `bench/candidates.py`, on CPU: each computes what it claims."""

from __future__ import annotations

import os
import subprocess
import sys
from functools import partial
from itertools import pairwise
from types import SimpleNamespace

import bias_gelu
import candidates
import inline_dropout
import numpy as np
import pytest
import quality_sweep
import short_attention
import torch
import torch.nn.functional as F

from kubetune.contract import LoraSpec
from kubetune_trainer import dropout as dropout_module
from kubetune_trainer import model as model_module
from kubetune_trainer.model import apply_lora
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


@pytest.mark.parametrize(
    ("lengths", "max_length"),
    [
        ([3, 16, 17, 32, 33, 64, 65, 100, 128, 2], 128),
        # texts over 128 tokens: blocks of 64 rows, a partial last one, beside short texts
        ([129, 5, 200, 64, 256], 256),
    ],
)
@pytest.mark.parametrize("stacked_op", [False, True], ids=["separate", "stacked"])
def test_short_attention_computes_each_texts_attention_and_its_gradients(
    lengths: list[int], max_length: int, stacked_op: bool
) -> None:
    """Texts of every tile size (16 to 128 rows, lengths on both sides of each boundary) and
    longer, in float32 under Triton's interpreter, against SDPA text by text; the inputs are
    views of one stacked projection, as the trainer passes them, or that projection itself
    (whose gradient the kernels then write in place)."""
    cu_seqlens = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    torch.manual_seed(0)
    stacked = torch.randn(int(cu_seqlens[-1]), 3, 2, 16, requires_grad=True)
    query, key, value = stacked[:, 0], stacked[:, 1], stacked[:, 2]
    if stacked_op:
        out = short_attention.short_attention_stacked(stacked, cu_seqlens, max_length)[0]
    else:
        out = short_attention.short_attention_forward(query, key, value, cu_seqlens, max_length)[0]
    grad_out = torch.randn_like(out)
    (out * grad_out).sum().backward()
    grads = stacked.grad.clone()
    stacked.grad = None
    expected = torch.cat(
        [
            F.scaled_dot_product_attention(
                *(t[start:end].transpose(0, 1) for t in (query, key, value))
            ).transpose(0, 1)
            for start, end in pairwise(cu_seqlens.tolist())
        ]
    )
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(grads, stacked.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("lora", [False, True], ids=["stacked-projection", "lora"])
def test_short_attention_in_the_packed_forward(lora: bool) -> None:
    """As the candidate, it gives the packed forward's embeddings and gradients, compiled with
    dynamic shapes (the kernels as opaque operators): on the stacked projection, and on the
    separate ones of LoRA-wrapped projections."""
    texts = packed_texts()
    encoder = tiny_encoder()
    if lora:
        holder = SimpleNamespace(encoder=encoder)  # all that apply_lora uses of a model
        apply_lora(holder, LoraSpec(target_modules=["query", "value"]))  # type: ignore[arg-type]
        with torch.no_grad():  # non-zero adapters, so that their part shows
            for name, parameter in encoder.named_parameters():
                if "lora_B" in name:
                    parameter.normal_()
    encoder.eval()

    def embeddings_and_grads(forward: object, max_length: int) -> list[torch.Tensor]:
        encoder.zero_grad(set_to_none=True)
        embeddings = embed(forward, texts, max_length)  # type: ignore[arg-type]
        embeddings.sum().backward()
        grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
        return [embeddings.detach(), *grads]

    expected = embeddings_and_grads(encoder, 64)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_module, "_self_attention", model_module._self_attention)
        candidates.apply(encoder, ["short-attention"])
        assert model_module._self_attention is short_attention.self_attention
        compiled = torch.compile(encoder, backend="aot_eager", dynamic=True)
        for got, want in zip(embeddings_and_grads(compiled, 64), expected, strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_inline_dropout_draws_the_trainers_bits_and_is_the_dropouts_kernel() -> None:
    seed = torch.tensor([11])
    expected = dropout_module.keep_bits(seed, 8 * 500 + 5, 6554)
    assert torch.equal(inline_dropout.keep_bits(seed, 8 * 500 + 5, 6554), expected)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dropout_module, "keep_bits", dropout_module.keep_bits)
        candidates.apply(tiny_encoder(), ["inline-dropout"])
        assert dropout_module.keep_bits is inline_dropout.keep_bits


_TRACE_INLINE_DROPOUT = """
import torch
from torch._functorch.aot_autograd import aot_module_simplified
import candidates
from kubetune_trainer import dropout

candidates.CANDIDATES["inline-dropout"](None)
seen = []

def backend(graph, inputs):
    def forward(traced, _):
        seen.append(traced.code)
        raise SystemExit(0 if "triton_kernel_wrapper" in traced.code else 1)
    return aot_module_simplified(graph, inputs, fw_compiler=forward)

torch.compile(dropout.bit_dropout, backend=backend, dynamic=True)(
    torch.randn(50, 8, requires_grad=True), 0.1
)
"""


def test_inline_dropout_traces_to_inductors_triton_kernel_node() -> None:
    """Without Triton's interpreter (which cannot trace it), `torch.compile` turns the
    operator into the node from which Inductor launches a user's Triton kernel itself."""
    environment = os.environ | {"TRITON_INTERPRET": "0"}
    environment["PYTHONPATH"] = os.pathsep.join(sys.path)
    traced = subprocess.run(
        [sys.executable, "-c", _TRACE_INLINE_DROPOUT],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert traced.returncode == 0, traced.stderr[-3000:]


@pytest.mark.parametrize("shape", [(130, 200), (3, 45, 200)], ids=["packed", "padded"])
def test_bias_gelu_gives_gelus_output_and_the_gradients_of_product_and_bias(
    shape: tuple[int, ...],
) -> None:
    """Rows and columns that are no multiple of the kernel's tile, packed [tokens, F] or
    padded [texts, length, F], in float32 under Triton's interpreter, against autograd
    through `F.gelu`."""
    torch.manual_seed(0)
    product = torch.randn(shape, requires_grad=True)
    bias = torch.randn(shape[-1], requires_grad=True)
    grad = torch.randn(shape)
    out = bias_gelu.BiasGelu.apply(product, bias)
    (out * grad).sum().backward()
    got = (out.detach(), product.grad.clone(), bias.grad.clone())
    product.grad = bias.grad = None
    expected = F.gelu(product + bias)
    (expected * grad).sum().backward()
    for have, want in zip(got, (expected.detach(), product.grad, bias.grad), strict=True):
        torch.testing.assert_close(have, want, atol=1e-5, rtol=1e-4)


def test_bias_gelu_in_the_packed_forward() -> None:
    """As the candidate, the packed forward's embeddings and gradients, compiled with dynamic
    shapes."""
    texts = packed_texts()
    encoder = tiny_encoder()
    encoder.eval()

    def embeddings_and_grads(forward: object) -> list[torch.Tensor]:
        encoder.zero_grad(set_to_none=True)
        embeddings = embed(forward, texts, 64)  # type: ignore[arg-type]
        embeddings.sum().backward()
        grads = [p.grad.clone() for p in encoder.parameters() if p.grad is not None]
        return [embeddings.detach(), *grads]

    expected = embeddings_and_grads(encoder)
    candidates.apply(encoder, ["bias-gelu"])
    assert all(
        isinstance(layer.intermediate.forward, partial)
        for layer in encoder.transformer.encoder.layer
    )
    compiled = torch.compile(encoder, backend="aot_eager", dynamic=True)
    for got, want in zip(embeddings_and_grads(compiled), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_every_quality_sweep_variant_names_known_candidates() -> None:
    """A misspelt candidate would fail only on the GPU machine, after its time is spent."""
    for name, variant in quality_sweep.VARIANTS.items():
        assert set(variant.candidates) <= set(candidates.CANDIDATES), name


def test_the_trainers_command_with_candidates_runs_in_one_process_only(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The trainer's launcher would start its ranks without the candidates."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("KUBETUNE_PROCESSES", "2")
    assert candidates.main(["bias-gelu", "--config", "trial.json"]) == 2
    assert "torchrun --nproc-per-node N bench/candidates.py" in capsys.readouterr().err
