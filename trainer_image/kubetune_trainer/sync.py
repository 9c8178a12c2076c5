"""Averaging gradients over a trial's processes on the CUDA-graph path, while the backward runs.

With CUDA graphs the trainer runs without DistributedDataParallel (its per-parameter hooks
would bring back the host time that the graphs save), so it averages gradients itself. Done
in one all-reduce after the backward, that all-reduce and the copies into and out of its
buffer add about 2.3 ms to a BERT-base step of about 25 ms on two GPUs (docs/benchmarks.md).

Here the packed forward runs as consecutive stages, each compiled apart
(`kubetune_trainer.model.Encoder.packed_stages`), so each stage's backward is a graph of its
own. When a later stage's backward is done, a hook copies its parameters' gradients into one
flat buffer (a *bucket*) and all-reduces it on a side stream, while the earlier stages'
backward goes on; the first stage's bucket (the token embeddings and the first layers) is
all that is averaged after the backward. Averaged fp32 gradients become views into their
bucket (nothing is copied back); bf16 buckets (half the bytes) are copied back into the fp32
gradients on the side stream. Each gradient's norm is computed there too, so gradient
clipping needs only a norm over those norms (`GradientBuckets.norm`). The word embeddings'
gradient, most of the first bucket and the one part of it that waits after the backward, is
sent as the rows of the step's tokens only: every other row is zero on every process.

The hook runs before the earlier stage's backward starts and after every gradient of the
later stage is in place: autograd runs a parameter's gradient accumulation before any other
node that became ready with it. Used by `kubetune_trainer.train.Trainer`; tested on CPU with
two gloo processes (`tests/trainer/test_step.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor, nn

from kubetune_trainer.errors import TrainingError

Stage = Callable[[Tensor, Tensor, Tensor, Tensor, int], Tensor]


class GradientBuckets:
    """One flat buffer per group of parameters (per stage), each all-reduced (averaged) over
    all processes once its gradients are complete, sent in `dtype`.

    `rows`, the word embeddings of the first group, are sent compacted: only the rows of the
    step's tokens (`Batch.token_rows`, the same on every process), since every other row's
    gradient is zero on every process. Of BERT-base's first bucket they are 23.4M of 38M
    values, of which a step of the Debian pairs uses about 11% (`bench/token_rows.py`)."""

    def __init__(
        self,
        groups: list[list[nn.Parameter]],
        dtype: torch.dtype,
        rows: nn.Parameter | None = None,
    ) -> None:
        if rows is not None:
            if not any(p is rows for p in groups[0]):
                raise TrainingError("the compacted rows must be a parameter of the first group")
            # last in its bucket, where the compacted rows take a varying part of its space
            groups = [[p for p in groups[0] if p is not rows] + [rows], *groups[1:]]
        self.groups = groups
        self.dtype = dtype
        self.rows = rows
        device = next(parameter.device for group in groups for parameter in group)
        self.device = device
        self.flat: list[Tensor] = []
        self.views: list[list[Tensor]] = []
        for group in groups:
            flat = torch.empty(sum(p.numel() for p in group), dtype=dtype, device=device)
            sizes = [p.numel() for p in group]
            self.flat.append(flat)
            self.views.append(
                [part.view_as(p) for part, p in zip(flat.split(sizes), group, strict=True)]
            )
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        # gloo has no average: sum, then divide
        self.average = dist.get_backend() == dist.Backend.NCCL
        self.world_size = dist.get_world_size()
        self.norms: list[Tensor | None] = [None] * len(groups)
        self.compacted = [False] * len(groups)
        self.finished: list[Tensor] = []

    def launch(self, index: int, token_rows: Tensor | None = None) -> None:
        """Start averaging group `index`, whose gradients are complete; on CUDA this returns
        at once, the work queued on the side stream behind what the device has queued so far.
        For the first group, `token_rows` (on the device) are the rows of `rows` to send."""
        group, views, flat = self.groups[index], self.views[index], self.flat[index]
        if not group:
            self.norms[index] = torch.zeros(1, device=self.device)
            return
        grads = [parameter.grad for parameter in group]
        if any(grad is None for grad in grads):
            raise TrainingError("a trainable parameter got no gradient in this step")
        compact = index == 0 and self.rows is not None and token_rows is not None
        whole = len(group) - 1 if compact else len(group)  # the tensors sent whole
        if self.stream is not None:  # the gradients are written on the current stream
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.stream) if self.stream is not None else nullcontext():
            # one multi-tensor kernel, casting to `dtype`
            torch._foreach_copy_(views[:whole], grads[:whole])  # type: ignore[arg-type]
            if compact:
                assert token_rows is not None
                dense = grads[-1]
                assert dense is not None
                start = flat.numel() - dense.numel()
                flat = flat[: start + token_rows.numel() * dense.shape[1]]
                sent = flat[start:].view(token_rows.numel(), dense.shape[1])
                sent.copy_(dense.index_select(0, token_rows))
            op = dist.ReduceOp.AVG if self.average else dist.ReduceOp.SUM
            work = dist.all_reduce(flat, op=op, async_op=True)
            assert work is not None
            work.wait()  # on CUDA, only the side stream waits for NCCL's
            if not self.average:
                flat.div_(self.world_size)
            averaged = views[:whole]
            if self.dtype != group[0].dtype:
                torch._foreach_copy_(grads[:whole], views[:whole])  # type: ignore[arg-type]
                averaged = grads[:whole]  # type: ignore[assignment]
            if compact:
                rows = sent.to(dense.dtype)
                # every other row is zero on every process: already the average
                dense.index_copy_(0, token_rows, rows)
                averaged = [*averaged, rows]
            # per tensor here, over them in `norm`: as `gradient_norm`
            self.norms[index] = torch.stack(torch._foreach_norm(averaged, 2))
            self.compacted[index] = compact

    def finish(self) -> None:
        """Wait (on the current stream) for every group, each launched once this step, and
        make the averaged gradients the parameters' `.grad`."""
        finished = [norms for norms in self.norms if norms is not None]
        if len(finished) < len(self.groups):
            raise TrainingError("a gradient bucket was not averaged in this step")
        self.finished, self.norms = finished, [None] * len(self.groups)
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        for group, views, compacted in zip(self.groups, self.views, self.compacted, strict=True):
            if group and self.dtype == group[0].dtype:
                # compacted rows were averaged into the parameter's own gradient
                sent = group[:-1] if compacted else group
                for parameter, view in zip(sent, views, strict=False):
                    parameter.grad = view

    def norm(self) -> Tensor:
        """The L2 norm of all averaged gradients, after `finish`."""
        return torch.linalg.vector_norm(torch.cat(self.finished))


class StagedForward:
    """The packed forward as consecutive stages (each typically compiled apart), with a hook
    on each stage's output that launches the next stage's gradient bucket in the backward.
    Called as `Encoder.forward` is."""

    def __init__(self, stages: list[Stage], buckets: GradientBuckets) -> None:
        self.stages = stages
        self.buckets = buckets

    def __call__(
        self,
        input_ids: Tensor,
        position_ids: Tensor,
        sequence_index: Tensor,
        cu_seqlens: Tensor,
        max_length: int,
    ) -> Tensor:
        states = input_ids
        for index, stage in enumerate(self.stages):
            if index > 0:
                torch._dynamo.maybe_mark_dynamic(states, 0)
            states = stage(states, position_ids, sequence_index, cu_seqlens, max_length)
            if index + 1 < len(self.stages) and states.requires_grad:
                # runs when the gradient reaches this stage's output: stage index + 1's
                # backward is done, and its parameters' gradients are accumulated
                states.register_hook(partial(self._ready, index + 1))
        return states

    def _ready(self, index: int, _grad: Tensor) -> None:
        self.buckets.launch(index)


def gradient_norm(grads: list[Tensor]) -> Tensor:
    """The L2 norm of all of `grads`: per tensor, then over them, as `clip_grad_norm_` computes
    it (one long sum loses precision)."""
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2)))


def clip_in_step(
    optimizer: torch.optim.Optimizer, grads: list[Tensor], norm: Tensor, max_norm: float
) -> None:
    """Clip `grads` (of all of `optimizer`'s parameters), whose L2 norm is `norm`, to
    `max_norm`, as `torch.nn.utils.clip_grad_norm_` does: times max_norm / (norm + 1e-6), if
    that is below 1. A fused Adam or AdamW step divides the gradients by the inverse factor
    itself (its `grad_scale`, as GradScaler uses it), which saves a pass over them; it must
    be the next step, with no GradScaler."""
    factor = torch.clamp((norm + 1e-6) / max_norm, min=1.0)
    if optimizer.defaults.get("fused"):
        optimizer.grad_scale = factor  # type: ignore[attr-defined]
    else:
        torch._foreach_div_(grads, factor)
