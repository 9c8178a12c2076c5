"""The step's loss inputs on several processes (gloo on CPU): what each process gathers, and
the gradient each gets back, are those of the whole batch on one process."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kubetune_trainer.batching import Batch, Packed
from kubetune_trainer.step import loss_inputs

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
