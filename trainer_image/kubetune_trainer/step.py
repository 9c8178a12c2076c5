"""The forward and backward pass of one training step: plain, or with gradient caching.

The encoder embeds all texts of the step (anchors, positives, hard negatives) in one packed
call. With several processes (one per GPU), each embeds its share of the batch and the loss
sees the whole batch: embeddings are all-gathered *with* their gradients, so every example's
negatives are all the batch's other positives, as on one GPU. Every process computes the
same global loss; the gather's backward sums each process's gradient for the embeddings it
owns, which makes them `world_size` times the global loss's, and DDP's gradient average
divides that back: the result is exactly the gradient of the one-GPU loss.

Gradient caching (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup") lets the contrastive batch, and with it the number of in-batch
negatives, grow past accelerator memory: embed the batch in mini-batches without a graph,
compute the loss and its gradient with respect to the embeddings, then re-run each
mini-batch with a graph and back-propagate that cached gradient. The random state of every
mini-batch is replayed so dropout masks match between the two passes; the result is the
gradient of the full-batch loss. It runs in one process only (the trial refuses it with
several).

Both functions return the loss as a detached device tensor: reading it would force a host
sync, so the training loop only does that at logging steps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.distributed.nn.functional import all_gather

from kubetune_trainer.batching import Batch, Packed
from kubetune_trainer.losses import Loss, LossInputs

EncodeFn = Callable[[Tensor, Tensor, Tensor, Tensor, int], Tensor]
"""The encoder's packed forward (`kubetune_trainer.model.Encoder`), possibly compiled and
wrapped in DistributedDataParallel."""


def _autocast(device: torch.device, amp_dtype: torch.dtype | None) -> torch.autocast:
    return torch.autocast(
        device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
    )


def embed(encoder: EncodeFn, texts: Packed, max_length: int) -> Tensor:
    """Embeddings [texts, D] of packed texts (dummy texts dropped). The token and text counts
    change every step; marking them dynamic lets `torch.compile` build one graph for all of
    them (with CUDA graphs, one compiled graph still serves all; a CUDA graph is recorded per
    padded shape)."""
    tensors = (texts.input_ids, texts.position_ids, texts.sequence_index, texts.cu_seqlens)
    for tensor in tensors:
        torch._dynamo.maybe_mark_dynamic(tensor, 0)
    embeddings = encoder(*tensors, max_length)
    return embeddings[: len(texts)] if texts.dummies else embeddings


def _fill(tensor: Tensor, rows: int) -> Tensor:
    """`tensor` with zero rows appended up to `rows` (all-gather needs equal shapes)."""
    if tensor.shape[0] == rows:
        return tensor
    return torch.cat([tensor, tensor.new_zeros((rows - tensor.shape[0], *tensor.shape[1:]))])


def _gather(tensors: list[Tensor], shares: tuple[int, ...]) -> list[Tensor]:
    """Every process's rows of each of `tensors` (each with this process's share of rows), in
    rank order, through one all-gather; gradients flow back to their owners."""
    if len(shares) == 1:
        return tensors
    most = max(shares)
    parts = all_gather(torch.cat([_fill(tensor, most) for tensor in tensors]))
    rows = [(part, count) for part, count in zip(parts, shares, strict=True)]
    return [
        torch.cat([part[k * most : k * most + count] for part, count in rows])
        for k in range(len(tensors))
    ]


def loss_inputs(batch: Batch, embeddings: Tensor) -> LossInputs:
    """The whole step's loss inputs from this process's embeddings (anchors, positives,
    negatives in `batch.texts` order): one all-gather for the anchors and positives, one for
    the negatives if any process has some; weights, groups and negative owners come with
    the batch for the whole step."""
    count = batch.examples
    anchor, positive = _gather([embeddings[:count], embeddings[count : 2 * count]], batch.shares)
    negative = None
    if sum(batch.negative_shares) > 0:
        (negative,) = _gather([embeddings[2 * count :]], batch.negative_shares)
    return LossInputs(
        anchor,
        positive,
        negative,
        batch.negative_owner if negative is not None else None,
        batch.weight,
        batch.group,
    )


def forward_backward(
    encoder: EncodeFn,
    batch: Batch,
    loss_fn: Loss,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler,
    max_length: int,
) -> Tensor:
    """Embed the whole batch with a graph, compute the loss, back-propagate it."""
    with _autocast(batch.weight.device, amp_dtype):
        embeddings = embed(encoder, batch.texts, max_length)
    loss = loss_fn(loss_inputs(batch, embeddings))
    scaler.scale(loss).backward()
    return loss.detach()


class _RandomState:
    """The CPU (and current CUDA device's) generator state, to replay a forward pass."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    @contextmanager
    def replay(self) -> Iterator[None]:
        devices = [self.device] if self.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu)
            if self.cuda is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def cached_forward_backward(
    encoder: EncodeFn,
    batch: Batch,
    loss_fn: Loss,
    amp_dtype: torch.dtype | None,
    scaler: torch.amp.GradScaler,
    max_length: int,
    mini_batch_size: int,
) -> Tensor:
    """The gradient of the full-batch loss, holding activations of one mini-batch at a time."""
    device = batch.weight.device
    texts = len(batch.texts)
    pieces = [
        batch.texts.rows(start, min(start + mini_batch_size, texts))
        for start in range(0, texts, mini_batch_size)
    ]
    states: list[_RandomState] = []
    chunks: list[Tensor] = []
    with torch.no_grad():
        for piece in pieces:
            states.append(_RandomState(device))
            with _autocast(device, amp_dtype):
                chunks.append(embed(encoder, piece, max_length).float())
    cached = torch.cat(chunks).requires_grad_()
    loss = loss_fn(loss_inputs(batch, cached))
    scaler.scale(loss).backward()
    assert cached.grad is not None
    start = 0
    for piece, state in zip(pieces, states, strict=True):
        with state.replay(), _autocast(device, amp_dtype):
            embedding = embed(encoder, piece, max_length).float()
        embedding.backward(gradient=cached.grad[start : start + len(piece)])
        start += len(piece)
    return loss.detach()
