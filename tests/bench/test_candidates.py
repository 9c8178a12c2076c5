"""The candidate changes of `bench/candidates.py`, on CPU: each computes what it claims."""

from __future__ import annotations

import candidates
import pytest
import quality_sweep
import torch

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
    assert candidates.main(["no-hidden-dropout", "--config", "trial.json"]) == 2
    assert "torchrun --nproc-per-node N bench/candidates.py" in capsys.readouterr().err
