"""Retrieval evaluation on held-out examples: the numbers that rank trials.

Every distinct anchor is a query; every distinct positive (and hard negative) is a document
of the corpus; a query's relevant documents are its positives with weight > 0. Search is
exact cosine similarity over the whole corpus. Metrics (`kubetune.contract.METRICS`):
nDCG@10 with binary relevance, recall@1/10/100, MRR@10, each averaged over queries, all
greater-is-better. The same evaluation runs on the starting model, so each trial reports its
gain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from kubetune_trainer.batching import pad
from kubetune_trainer.data import Example
from kubetune_trainer.model import EmbeddingModel

RECALL_AT = (1, 10, 100)
TOP_K = max(RECALL_AT)


@dataclass(frozen=True)
class RetrievalSet:
    """Queries, corpus, and for each query the corpus indices relevant to it."""

    queries: list[str]
    corpus: list[str]
    relevant: list[frozenset[int]]

    @classmethod
    def from_examples(cls, examples: Sequence[Example]) -> RetrievalSet:
        corpus_ids: dict[str, int] = {}
        relevant: dict[str, set[int]] = {}
        for example in examples:
            document = corpus_ids.setdefault(example.positive, len(corpus_ids))
            if example.negative is not None:
                corpus_ids.setdefault(example.negative, len(corpus_ids))
            hits = relevant.setdefault(example.anchor, set())
            if example.weight > 0:
                hits.add(document)
        queries = [query for query, hits in relevant.items() if hits]
        return cls(queries, list(corpus_ids), [frozenset(relevant[query]) for query in queries])


def ranking_metrics(
    rankings: Sequence[Sequence[int]], relevant: Sequence[frozenset[int]]
) -> dict[str, float]:
    """The metrics for ranked corpus indices per query (best first)."""
    totals = dict.fromkeys(("ndcg@10", "mrr@10", *(f"recall@{k}" for k in RECALL_AT)), 0.0)
    for ranking, hits in zip(rankings, relevant, strict=True):
        flags = [document in hits for document in ranking[:TOP_K]]
        dcg = sum(1 / math.log2(rank + 2) for rank, hit in enumerate(flags[:10]) if hit)
        ideal = sum(1 / math.log2(rank + 2) for rank in range(min(len(hits), 10)))
        totals["ndcg@10"] += dcg / ideal
        first = next((rank for rank, hit in enumerate(flags[:10]) if hit), None)
        totals["mrr@10"] += 0.0 if first is None else 1 / (first + 1)
        for k in RECALL_AT:
            totals[f"recall@{k}"] += sum(flags[:k]) / len(hits)
    return {name: total / len(relevant) for name, total in totals.items()}


CPU_BATCH_TOKENS = 2048
"""Padded tokens per evaluation batch on a CPU. A CPU's cost grows with every padded token
and has no launch overhead to spread, so batches stay small and close to their texts'
lengths (on 200 Debian documents: 2.8 s against 4.7 s for batches of 128)."""


def length_batches(
    lengths: Sequence[int], batch_size: int, max_tokens: int | None
) -> list[list[int]]:
    """Indices sorted by length, cut into batches of at most `batch_size` texts and, when
    `max_tokens` is given, at most that many tokens once padded to the batch's longest."""
    batches: list[list[int]] = []
    current: list[int] = []
    for index in sorted(range(len(lengths)), key=lengths.__getitem__):
        padded = (len(current) + 1) * lengths[index]
        if current and (
            len(current) == batch_size or (max_tokens is not None and padded > max_tokens)
        ):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


@torch.inference_mode()
def encode(
    model: EmbeddingModel,
    texts: list[str],
    device: torch.device,
    amp_dtype: torch.dtype | None,
    max_length: int,
    batch_size: int = 128,
    max_batch_tokens: int | None = None,
) -> Tensor:
    """Unit-length embeddings [N, D] (fp32), batched by length so padding stays small."""
    token_ids = model.tokenize(texts, max_length)
    batches = length_batches([len(ids) for ids in token_ids], batch_size, max_batch_tokens)
    was_training = model.encoder.training
    model.encoder.eval()
    chunks = []
    for batch in batches:
        features = pad([token_ids[i] for i in batch], model.pad_token_id).to(device)
        with torch.autocast(
            device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None
        ):
            embeddings = model.encoder.embed_padded(features.input_ids, features.attention_mask)
        chunks.append(torch.nn.functional.normalize(embeddings.float(), dim=-1))
    model.encoder.train(was_training)
    embeddings = torch.cat(chunks)
    order = [index for batch in batches for index in batch]
    result = torch.empty_like(embeddings)
    result[torch.tensor(order, device=embeddings.device)] = embeddings
    return result


def search(queries: Tensor, corpus: Tensor, k: int, chunk: int = 1024) -> list[list[int]]:
    """Exact top-k corpus indices per query by dot product (cosine on unit vectors)."""
    k = min(k, corpus.shape[0])
    rankings: list[list[int]] = []
    for start in range(0, queries.shape[0], chunk):
        scores = queries[start : start + chunk] @ corpus.T
        rankings.extend(scores.topk(k, dim=1).indices.cpu().tolist())
    return rankings


class RetrievalEvaluator:
    """Evaluates an `EmbeddingModel` on a `RetrievalSet`; returns `{metric: value}`."""

    greater_is_better = True

    def __init__(self, data: RetrievalSet, max_length: int, batch_size: int = 128) -> None:
        self.data = data
        self.max_length = max_length
        self.batch_size = batch_size

    def __call__(
        self, model: EmbeddingModel, device: torch.device, amp_dtype: torch.dtype | None
    ) -> dict[str, float]:
        max_tokens = CPU_BATCH_TOKENS if device.type == "cpu" else None
        queries, corpus = (
            encode(model, texts, device, amp_dtype, self.max_length, self.batch_size, max_tokens)
            for texts in (self.data.queries, self.data.corpus)
        )
        return ranking_metrics(search(queries, corpus, TOP_K), self.data.relevant)
