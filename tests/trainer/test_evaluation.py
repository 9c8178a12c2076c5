"""Retrieval metrics on hand-built rankings, and how examples become queries and a corpus."""

from __future__ import annotations

import math

import pytest
import torch

from kubetune_trainer.data import Example
from kubetune_trainer.evaluation import RetrievalSet, length_batches, ranking_metrics, search


def test_metrics_on_a_hand_built_ranking() -> None:
    relevant = [frozenset({0}), frozenset({3, 4}), frozenset({9})]
    rankings = [
        [0, 1, 2],  # hit at rank 1
        [1, 3, 2, 4],  # hits at ranks 2 and 4 of two relevant
        [1, 2, 3, 4, 5, 6, 7, 8, 0, 5, 9],  # hit at rank 11: outside @10
    ]
    metrics = ranking_metrics(rankings, relevant)
    ndcg_second = (1 / math.log2(3) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    assert metrics["ndcg@10"] == pytest.approx((1 + ndcg_second + 0) / 3)
    assert metrics["mrr@10"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert metrics["recall@1"] == pytest.approx((1 + 0 + 0) / 3)
    assert metrics["recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    assert metrics["recall@100"] == pytest.approx(1.0)


def test_examples_become_queries_corpus_and_relevance() -> None:
    examples = [
        Example("q1", "d1"),
        Example("q1", "d2", "d3"),
        Example("q2", "d1"),
        Example("q3", "d4", None, 0.0),
    ]
    data = RetrievalSet.from_examples(examples)
    assert data.corpus == ["d1", "d2", "d3", "d4"]
    assert data.queries == ["q1", "q2"]
    assert data.relevant == [frozenset({0, 1}), frozenset({0})]


def test_search_is_exact_top_k_by_cosine() -> None:
    corpus = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]), dim=-1
    )
    queries = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0], [1.0, 0.1]]), dim=-1)
    assert search(queries, corpus, k=100) == [[2, 1, 0], [0, 1, 2]]


def test_batches_follow_length_and_stop_at_the_token_budget() -> None:
    lengths = [30, 5, 200, 6, 7, 31]
    assert length_batches(lengths, batch_size=128, max_tokens=None) == [[1, 3, 4, 0, 5, 2]]
    assert length_batches(lengths, batch_size=2, max_tokens=None) == [[1, 3], [4, 0], [5, 2]]
    # Padded to the batch's longest: 4 x 30 would pass 100 tokens, a lone text never waits.
    assert length_batches(lengths, batch_size=128, max_tokens=100) == [[1, 3, 4], [0, 5], [2]]
