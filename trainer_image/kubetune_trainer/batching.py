"""Turning examples into packed token batches, with tokenization done once up front.

Every text is tokenized once before training starts and kept in one flat array, so building
a step's batch is a few vectorised gathers, far cheaper than the accelerator's step.

A training batch is *packed*, not padded: the token ids of all its texts (anchors, then
positives, then hard negatives) lie end to end in one 1-D tensor, with cumulative sequence
offsets (`cu_seqlens`) marking where each text starts. The encoder then spends no work on
padding (on the Debian pairs about 88 real tokens per pair against 256 for pairs padded to
128), and there is one tensor shape per step whatever the lengths, which `torch.compile`
handles with one dynamic-shape graph instead of recompiling per length.

Which examples form step `s`'s batch is a pure function of (seed, s): epoch `e` is a fixed
permutation seeded by `seed + e`. A resumed run therefore continues with exactly the
batches the interrupted one would have seen. With several processes (one per GPU), every
process computes the same global batch and takes its contiguous share of it, so the loss
can gather the whole batch back in order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from kubetune_trainer.data import Example
from kubetune_trainer.model import EmbeddingModel

PAD_MULTIPLE = 16
GRAPH_TEXT_MULTIPLE = 16
"""With CUDA graphs, a packed batch's text count is padded to a multiple of this."""


@dataclass
class Features:
    """Right-padded token ids and their attention mask, [rows, length] (for evaluation)."""

    input_ids: Tensor
    attention_mask: Tensor

    def to(self, device: torch.device) -> Features:
        return Features(
            self.input_ids.to(device, non_blocking=True),
            self.attention_mask.to(device, non_blocking=True),
        )


def pad(sequences: list[list[int]], pad_id: int, multiple: int = PAD_MULTIPLE) -> Features:
    """Right-pad to the longest sequence, rounded up to `multiple`."""
    longest = max(len(sequence) for sequence in sequences)
    length = -(-longest // multiple) * multiple
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        input_ids[row, : len(sequence)] = torch.tensor(sequence, dtype=torch.long)
        attention_mask[row, : len(sequence)] = 1
    return Features(input_ids, attention_mask)


@dataclass
class Packed:
    """Texts end to end: token ids, each token's position in its text and the text it belongs
    to ([tokens]), and the texts' start offsets plus the total (`cu_seqlens`, [texts + 1],
    int32, as variable-length attention kernels take them). `offsets` is the same as
    `cu_seqlens` on the host, so slicing a packed batch never waits for the device.
    The last `dummies` texts are padding (see `graph_padding`): `len` and `tokens` count
    the real texts only."""

    input_ids: Tensor
    position_ids: Tensor
    sequence_index: Tensor
    cu_seqlens: Tensor
    offsets: tuple[int, ...]
    dummies: int = 0

    @classmethod
    def from_arrays(cls, input_ids: np.ndarray, lengths: np.ndarray, dummies: int = 0) -> Packed:
        """Pack the concatenated token ids of texts of the given lengths (the last `dummies`
        of them padding)."""
        cu = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        starts = np.repeat(cu[:-1], lengths)
        return cls(
            input_ids=torch.from_numpy(input_ids.astype(np.int64, copy=False)),
            position_ids=torch.from_numpy(np.arange(len(input_ids), dtype=np.int64) - starts),
            sequence_index=torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths)),
            cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
            offsets=tuple(cu.tolist()),
            dummies=dummies,
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1 - self.dummies

    @property
    def tokens(self) -> int:
        return self.offsets[len(self)]

    def to(self, device: torch.device) -> Packed:
        """A copy on `device`; from pinned host memory on CUDA, so the copy does not block."""

        def move(tensor: Tensor) -> Tensor:
            if device.type == "cuda":
                tensor = tensor.pin_memory()
            return tensor.to(device, non_blocking=True)

        return Packed(
            move(self.input_ids),
            move(self.position_ids),
            move(self.sequence_index),
            move(self.cu_seqlens),
            self.offsets,
            self.dummies,
        )

    def rows(self, start: int, stop: int) -> Packed:
        """Texts `start` to `stop` (exclusive), repacked from offset 0, without padding."""
        first, last = self.offsets[start], self.offsets[stop]
        return Packed(
            self.input_ids[first:last],
            self.position_ids[first:last],
            self.sequence_index[first:last] - start,
            self.cu_seqlens[start : stop + 1] - first,
            tuple(offset - first for offset in self.offsets[start : stop + 1]),
        )


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def graph_shape(counts: list[tuple[int, int]], max_length: int) -> tuple[int, int]:
    """The (tokens, texts) that every process pads its packed batch to, for CUDA graphs,
    given every process's real (tokens, texts) of the step.

    All processes get the same shape, so they replay the same graph, do the same work and
    reach the step's collectives together: a process padded to a smaller shape would only
    wait for the others (and would record graphs at other steps than they do).
    The token count is rounded up to a multiple of a power of two between 1/64 and 1/32 of
    the largest process's (at least 16, so Triton's divisibility specialisation is the same
    for every size): padding adds at most about 3% of the tokens, and a run sees a handful
    of distinct sizes. The text count is a multiple of `GRAPH_TEXT_MULTIPLE`, with at least
    one dummy text on every process, and enough of them that each holds 1 to `max_length`
    tokens (`graph_padding`).
    """
    if max_length < 2:  # one-token texts leave no room to spread the rounding over dummies
        raise ValueError("padding for CUDA graphs needs a maximum length of at least 2")
    step = max(16, 1 << max(0, max(tokens for tokens, _ in counts).bit_length() - 6))
    texts = _round_up(max(count for _, count in counts) + 1, GRAPH_TEXT_MULTIPLE)
    while True:  # `texts` only grows, until both bounds below hold
        # at least one token for each dummy text ...
        tokens = _round_up(max(real + texts - count for real, count in counts), step)
        # ... and at most `max_length`
        needed = max(count + -(-(tokens - real) // max_length) for real, count in counts)
        if needed <= texts:
            return tokens, texts
        texts = _round_up(needed, GRAPH_TEXT_MULTIPLE)


def graph_padding(tokens: int, texts: int, shape: tuple[int, int]) -> np.ndarray:
    """Lengths of the dummy texts that pad a packed batch of `tokens` in `texts` up to
    `shape` (from `graph_shape`), as even as can be. The dummies attend only to themselves
    and are dropped after pooling: the real texts' embeddings, and every gradient, are those
    of the unpadded batch."""
    count, pad = shape[1] - texts, shape[0] - tokens
    lengths = np.full(count, pad // count, dtype=np.int64)
    lengths[: pad % count] += 1
    return lengths


def balanced_order(tokens: np.ndarray, world_size: int) -> np.ndarray:
    """An order of the step's examples (given each one's token count) whose contiguous
    shares, as `np.array_split` cuts them, hold about as many tokens each.

    With CUDA graphs every process pads its share to the largest share's token count, so an
    unbalanced split costs every process the difference; with the 128 Debian pairs of a
    process, two random halves differ by about 2% of their tokens. The longest examples
    are dealt out first, back and forth over the processes (0, 1, ..., 1, 0, ...), which
    leaves the shares within about one short example of each other. The loss does not depend
    on the examples' order (each process gathers the whole step in this order)."""
    count = len(tokens)
    by_length = np.argsort(-tokens, kind="stable")
    position = np.arange(count)
    rounds, slot = position // world_size, position % world_size
    owner = np.where(rounds % 2 == 0, slot, world_size - 1 - slot)
    last = rounds == count // world_size  # a partial last round: first processes, as array_split
    owner[last] = slot[last]
    return by_length[np.argsort(owner, kind="stable")]


@dataclass
class Batch:
    """This process's share of one training step's examples.

    `texts` holds the anchors, then the positives, then the hard negatives of this
    process's examples that have one. The rest describes the whole step, all processes'
    examples in rank order, which every process knows without asking the others:
    `negative_owner[k]` is the row of the example that the step's negative `k` belongs to;
    `weight` is every example's weight; `group[i] == group[j]` means examples `i` and `j`
    share an anchor text, so neither's positive is a negative for the other. `shares` and
    `negative_shares` give every process's number of examples and of negatives, so the loss
    can gather the step's embeddings from all processes. With graph shapes (the path on
    which the trainer averages gradients itself), `token_rows` holds the distinct token ids
    of the whole step (id 0 of the dummies included), ascending: the only rows of the word
    embeddings whose gradient any process can have, so the processes average those rows only
    (`kubetune_trainer.sync`).
    """

    texts: Packed
    examples: int
    negative_owner: Tensor | None
    weight: Tensor
    group: Tensor
    shares: tuple[int, ...]
    negative_shares: tuple[int, ...]
    token_rows: Tensor | None = None

    @property
    def negatives(self) -> int:
        return len(self.texts) - 2 * self.examples

    @property
    def global_examples(self) -> int:
        return sum(self.shares)

    def to(self, device: torch.device) -> Batch:
        return Batch(
            texts=self.texts.to(device),
            examples=self.examples,
            negative_owner=None
            if self.negative_owner is None
            else self.negative_owner.to(device, non_blocking=True),
            weight=self.weight.to(device, non_blocking=True),
            group=self.group.to(device, non_blocking=True),
            shares=self.shares,
            negative_shares=self.negative_shares,
            token_rows=None
            if self.token_rows is None
            else self.token_rows.to(device, non_blocking=True),
        )

    def __len__(self) -> int:
        return self.examples


class TokenIds:
    """Token-id lists stored end to end in one array, gathered by row."""

    def __init__(self, sequences: list[list[int]]) -> None:
        self.lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
        self.starts = np.zeros(len(sequences), dtype=np.int64)
        np.cumsum(self.lengths[:-1], out=self.starts[1:])
        self.flat = np.fromiter(
            (token for sequence in sequences for token in sequence),
            dtype=np.int32,
            count=int(self.lengths.sum()),
        )

    def __len__(self) -> int:
        return len(self.lengths)

    def gather(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The concatenated token ids of `rows` and their lengths."""
        lengths = self.lengths[rows]
        cu = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        source = np.arange(cu[-1], dtype=np.int64) + np.repeat(self.starts[rows] - cu[:-1], lengths)
        return self.flat[source], lengths


class TokenizedExamples:
    """Examples as token ids, ready to be gathered into packed batches."""

    def __init__(self, examples: list[Example], model: EmbeddingModel, max_length: int) -> None:
        self.anchors = TokenIds(
            model.tokenize([example.anchor for example in examples], max_length)
        )
        self.positives = TokenIds(
            model.tokenize([example.positive for example in examples], max_length)
        )
        with_negative = [i for i, example in enumerate(examples) if example.negative is not None]
        self.negatives = TokenIds(
            model.tokenize([examples[i].negative or "" for i in with_negative], max_length)
        )
        self.negative_row = np.full(len(examples), -1, dtype=np.int64)
        self.negative_row[with_negative] = np.arange(len(with_negative))
        self.weights = torch.tensor([example.weight for example in examples], dtype=torch.float32)
        anchor_ids: dict[str, int] = {}
        self.groups = torch.tensor(
            [anchor_ids.setdefault(example.anchor, len(anchor_ids)) for example in examples],
            dtype=torch.long,
        )
        self.max_length = max_length

    def __len__(self) -> int:
        return len(self.anchors)

    def collate(
        self,
        indices: list[int],
        rank: int = 0,
        world_size: int = 1,
        graph_shapes: bool = False,
        balance: bool = False,
    ) -> Batch:
        """Process `rank`'s contiguous share of the step's batch `indices`; with
        `graph_shapes`, its texts are padded with dummies (`graph_padding`). With `balance`,
        the step's examples are first reordered so that the shares hold about as many tokens
        each (`balanced_order`)."""
        order = np.asarray(indices, dtype=np.int64)
        if balance and world_size > 1:
            order = order[balanced_order(self._tokens(order), world_size)]
        parts = np.array_split(order, world_size)
        negative_shares = tuple(int((self.negative_row[part] >= 0).sum()) for part in parts)
        mine = parts[rank]
        shape = self._graph_shape(parts) if graph_shapes else None
        pieces = [self.anchors.gather(mine), self.positives.gather(mine)]
        negatives = self.negative_row[mine]
        if negative_shares[rank]:
            pieces.append(self.negatives.gather(negatives[negatives >= 0]))
        dummies = 0
        if shape is not None:
            tokens = sum(len(ids) for ids, _ in pieces)
            lengths = graph_padding(tokens, sum(len(part) for _, part in pieces), shape)
            # any token id serves: the dummies' outputs are dropped
            pieces.append((np.zeros(int(lengths.sum()), dtype=np.int32), lengths))
            dummies = len(lengths)
        texts = Packed.from_arrays(
            np.concatenate([ids for ids, _ in pieces]),
            np.concatenate([lengths for _, lengths in pieces]),
            dummies,
        )
        rows = torch.from_numpy(np.concatenate(parts))
        owners = np.flatnonzero(self.negative_row[rows.numpy()] >= 0)
        return Batch(
            texts=texts,
            examples=len(mine),
            negative_owner=torch.from_numpy(owners) if len(owners) else None,
            weight=self.weights[rows],
            group=self.groups[rows],
            shares=tuple(len(part) for part in parts),
            negative_shares=negative_shares,
            token_rows=torch.from_numpy(self._token_rows(order)) if shape is not None else None,
        )

    def _token_rows(self, rows: np.ndarray) -> np.ndarray:
        """The distinct token ids of examples `rows` (anchors, positives, hard negatives) and
        id 0, which dummy texts use, ascending."""
        negatives = self.negative_row[rows]
        ids = [
            self.anchors.gather(rows)[0],
            self.positives.gather(rows)[0],
            self.negatives.gather(negatives[negatives >= 0])[0],
        ]
        present = np.zeros(max(int(part.max(initial=0)) for part in ids) + 1, dtype=bool)
        present[0] = True
        for part in ids:
            present[part] = True
        return np.flatnonzero(present)

    def _tokens(self, rows: np.ndarray) -> np.ndarray:
        """Each example's tokens: anchor, positive and hard negative, if any."""
        tokens = self.anchors.lengths[rows] + self.positives.lengths[rows]
        negatives = self.negative_row[rows]
        has = negatives >= 0
        tokens[has] += self.negatives.lengths[negatives[has]]
        return tokens

    def _graph_shape(self, parts: list[np.ndarray]) -> tuple[int, int]:
        """The padded shape of every process's share (`graph_shape`), from text lengths
        alone, so each process finds the same without asking the others."""
        counts = []
        for part in parts:
            negatives = self.negative_row[part]
            negatives = negatives[negatives >= 0]
            tokens = self.anchors.lengths[part].sum() + self.positives.lengths[part].sum()
            tokens += self.negatives.lengths[negatives].sum()
            counts.append((int(tokens), 2 * len(part) + len(negatives)))
        return graph_shape(counts, self.max_length)


class BatchSchedule:
    """Which examples make up each step's batch: a seeded permutation per epoch."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        self.size = size
        self.batch_size = min(batch_size, size)
        self.seed = seed
        self.steps_per_epoch = -(-size // self.batch_size)
        self._epoch = -1
        self._order: list[int] = []

    def indices(self, step: int) -> list[int]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._order = torch.randperm(self.size, generator=generator).tolist()
            self._epoch = epoch
        start = position * self.batch_size
        return self._order[start : start + self.batch_size]
