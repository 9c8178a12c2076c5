"""The step on several processes (gloo on CPU): what each process gathers, the gradient each
gets back, and the graph path's averaged gradients and optimizer step are those of the whole
batch on one process."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kubetune.contract import LossSpec
from kubetune_trainer.batching import Batch, Packed, TokenizedExamples
from kubetune_trainer.data import Example
from kubetune_trainer.losses import build_loss
from kubetune_trainer.model import EmbeddingModel, load_model
from kubetune_trainer.step import forward_backward, loss_inputs
from kubetune_trainer.sync import GradientBuckets, StagedForward, clip_in_step

SHARES = (3, 2)
NEGATIVE_SHARES = (0, 2)  # unequal, and none at all on one process
OWNERS = [3, 4]
DIM = 4


def _embeddings() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    examples, negatives = sum(SHARES), sum(NEGATIVE_SHARES)
    anchor, positive = (torch.randn(examples, DIM, generator=generator) for _ in range(2))
    return anchor, positive, torch.randn(negatives, DIM, generator=generator)


def _objective(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
) -> torch.Tensor:
    """Any function that tells every row apart: a row in the wrong place changes it."""
    rows = torch.arange(1, anchor.shape[0] + 1, dtype=torch.float32)[:, None]
    return (rows * anchor * positive).sum() + (negative**2).sum() * 0.5 + anchor[0].sum()


def _batch(rank: int) -> Batch:
    count = SHARES[rank]
    texts = 2 * count + NEGATIVE_SHARES[rank]
    return Batch(
        texts=Packed.from_arrays(np.zeros(texts, dtype=np.int64), np.ones(texts, dtype=np.int64)),
        examples=count,
        negative_owner=torch.tensor(OWNERS),
        weight=torch.arange(sum(SHARES), dtype=torch.float32),
        group=torch.arange(sum(SHARES)),
        shares=SHARES,
        negative_shares=NEGATIVE_SHARES,
    )


def _process(rank: int, port: int, out: Path) -> None:
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    anchor, positive, negative = _embeddings()
    first = sum(SHARES[:rank])
    first_negative = sum(NEGATIVE_SHARES[:rank])
    mine = torch.cat(
        [
            anchor[first : first + SHARES[rank]],
            positive[first : first + SHARES[rank]],
            negative[first_negative : first_negative + NEGATIVE_SHARES[rank]],
        ]
    ).requires_grad_()
    inputs = loss_inputs(_batch(rank), mine)
    assert inputs.negative is not None and inputs.negative_owner is not None
    _objective(inputs.anchor, inputs.positive, inputs.negative).backward()
    torch.save(
        {
            "anchor": inputs.anchor.detach(),
            "positive": inputs.positive.detach(),
            "negative": inputs.negative.detach(),
            "owner": inputs.negative_owner,
            "grad": mine.grad,
        },
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_loss_inputs_gather_the_whole_batch_and_send_gradients_to_their_owners(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_process, args=(port, tmp_path), nprocs=2)
    anchor, positive, negative = (t.requires_grad_() for t in _embeddings())
    _objective(anchor, positive, negative).backward()
    assert anchor.grad is not None and positive.grad is not None and negative.grad is not None
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["anchor"], anchor.detach())
        torch.testing.assert_close(got["positive"], positive.detach())
        torch.testing.assert_close(got["negative"], negative.detach())
        assert got["owner"].tolist() == OWNERS
        first, count = sum(SHARES[:rank]), SHARES[rank]
        first_negative = sum(NEGATIVE_SHARES[:rank])
        expected = torch.cat(
            [
                anchor.grad[first : first + count],
                positive.grad[first : first + count],
                negative.grad[first_negative : first_negative + NEGATIVE_SHARES[rank]],
            ]
        )
        # every process computes the whole objective, so its rows get world_size times the
        # one-process gradient, which the gradient average divides back (see step.py)
        torch.testing.assert_close(got["grad"], 2 * expected)


# The graph path's own gradient averaging (kubetune_trainer.sync), on the packaged model in
# two stages: each process's averaged gradients, their norm and the clipped AdamW step equal
# those of the whole batch on one process.

EXAMPLES = [
    Example(f"query {i} about {topic}", f"a document on {topic} " * (i % 4 + 1), negative)
    for i, (topic, negative) in enumerate(
        [
            ("games", "a web server"),
            ("json", None),
            ("fonts", "a database"),
            ("audio", None),
            ("mail", "a mail server for many users"),
            ("kernels", None),
            ("editors", None),
        ]
    )
]
ORDER = [3, 6, 0, 5, 1, 4, 2]
MAX_NORM = 0.05  # small enough that clipping acts


def _model(model_dir: Path) -> tuple[EmbeddingModel, TokenizedExamples]:
    torch.manual_seed(0)
    model = load_model(model_dir, str(model_dir))
    model.encoder.eval()  # no dropout: every process computes the same function
    model.encoder.freeze_unused()
    return model, TokenizedExamples(EXAMPLES, model, max_length=16)


def _adamw_step(model: EmbeddingModel, fused: bool) -> torch.optim.AdamW:
    parameters = [p for p in model.encoder.parameters() if p.requires_grad]
    # eps well above the gradients' rounding noise, which a first Adam step would blow up
    return torch.optim.AdamW(parameters, lr=1e-3, eps=1e-6, fused=fused)


def _buckets_process(
    rank: int, port: int, out: Path, model_dir: Path, dtype: torch.dtype, compact: bool
) -> None:
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model, data = _model(model_dir)
    stages = model.encoder.packed_stages(first_layers=2)
    assert stages is not None and stages[0].embeddings is not None
    word_embeddings = stages[0].embeddings.word_embeddings.weight
    rows = word_embeddings if compact else None
    buckets = GradientBuckets([stage.trainable() for stage in stages], dtype, rows)
    encode = StagedForward(list(stages), buckets)
    batch = data.collate(ORDER, rank, 2, graph_shapes=True, balance=True)
    assert batch.token_rows is not None
    # the step's tokens, the same on both processes: a small part of the vocabulary
    assert 0 < batch.token_rows.numel() < word_embeddings.shape[0] // 100
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = forward_backward(encode, batch, build_loss("mnrl", LossSpec()), None, scaler, 16)
    buckets.launch(0, batch.token_rows)  # the second stage's bucket was launched in the backward
    buckets.finish()
    assert buckets.compacted[0] is compact
    names = [name for name, p in model.encoder.named_parameters() if p.requires_grad]
    grads = {
        name: p.grad.clone() for name, p in model.encoder.named_parameters() if p.grad is not None
    }
    norm = buckets.norm()
    optimizer = _adamw_step(model, fused=True)
    clip_in_step(optimizer, list(grads.values()), norm, MAX_NORM)
    optimizer.step()
    weights = {
        name: p.detach().clone() for name, p in model.encoder.named_parameters() if name in grads
    }
    assert sorted(grads) == sorted(names)
    torch.save(
        {
            "loss": loss,
            "grads": grads,
            "norm": norm,
            "weights": weights,
            "shares": batch.shares,
            "token_rows": batch.token_rows,
        },
        out / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


@pytest.mark.parametrize(
    ("dtype", "compact", "tolerance", "weight_tolerance"),
    [
        (torch.float32, True, 1e-5, 1e-6),
        (torch.float32, False, 1e-5, 1e-6),
        (torch.bfloat16, True, 1e-2, 5e-4),
    ],
    ids=["fp32-compact", "fp32", "bf16-compact"],
)
def test_gradient_buckets_average_to_the_one_process_gradient_and_step(
    tmp_path: Path,
    model_dir: Path,
    dtype: torch.dtype,
    compact: bool,
    tolerance: float,
    weight_tolerance: float,
) -> None:
    """Also with the word embeddings sent as the step's rows only (`compact`)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.spawn(_buckets_process, args=(port, tmp_path, model_dir, dtype, compact), nprocs=2)
    model, data = _model(model_dir)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    loss = forward_backward(
        model.encoder, data.collate(ORDER), build_loss("mnrl", LossSpec()), None, scaler, 16
    )
    named = {name: p for name, p in model.encoder.named_parameters() if p.requires_grad}
    norm = torch.nn.utils.clip_grad_norm_(named.values(), MAX_NORM)  # clips in place
    grads = {name: p.grad.clone() for name, p in named.items() if p.grad is not None}
    _adamw_step(model, fused=False).step()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["shares"] == (4, 3)
        assert torch.equal(got["token_rows"], torch.load(tmp_path / "rank0.pt")["token_rows"])
        torch.testing.assert_close(got["loss"], loss.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got["norm"], norm, rtol=tolerance, atol=0)
        assert got["grads"].keys() == grads.keys()
        for name, grad in grads.items():  # the reference was clipped; the buckets' are not
            expected = grad * (norm + 1e-6) / MAX_NORM
            # (a key bias's gradient is zero up to rounding: compare it on the whole's scale)
            scale = expected.abs().max().clamp_min(1e-4 * norm)
            assert (got["grads"][name] - expected).abs().max() <= tolerance * scale, name
        for name, weight in got["weights"].items():
            torch.testing.assert_close(weight, named[name].detach(), rtol=0, atol=weight_tolerance)
