"""The losses on tiny hand-made embeddings: values against the formulas, masking, weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kubetune.contract import LossSpec
from kubetune_trainer.losses import (
    LossInputs,
    MultipleNegativesRankingLoss,
    TripletMarginLoss,
    WeightedContrastiveLoss,
    build_loss,
)


def inputs(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor | None = None,
    owner: list[int] | None = None,
    weight: list[float] | None = None,
    group: list[int] | None = None,
) -> LossInputs:
    size = anchor.shape[0]
    return LossInputs(
        anchor=anchor,
        positive=positive,
        negative=negative,
        negative_owner=None if owner is None else torch.tensor(owner),
        weight=torch.tensor(weight or [1.0] * size),
        group=torch.tensor(group if group is not None else list(range(size))),
    )


def cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-row InfoNCE with the diagonal as the target, written out."""
    return torch.stack([torch.logsumexp(row, 0) - row[i] for i, row in enumerate(logits)])


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return tuple(torch.randn(4, 8, generator=generator) for _ in range(3))  # type: ignore[return-value]


def test_mnrl_is_cross_entropy_over_in_batch_candidates(batch: tuple[torch.Tensor, ...]) -> None:
    anchor, positive, _ = batch
    logits = 20 * F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T
    loss = MultipleNegativesRankingLoss(scale=20)(inputs(anchor, positive))
    assert loss.item() == pytest.approx(cross_entropy(logits).mean().item(), rel=1e-5)


def test_mnrl_is_near_zero_when_every_anchor_matches_only_its_positive() -> None:
    eye = torch.eye(4)
    assert MultipleNegativesRankingLoss(scale=20)(inputs(eye, eye)).item() < 1e-6
    loss = MultipleNegativesRankingLoss(scale=2)(inputs(eye, eye))
    assert loss.item() == pytest.approx(math.log(1 + 3 * math.exp(-2)), rel=1e-5)


def test_hard_negatives_join_every_anchors_candidates(batch: tuple[torch.Tensor, ...]) -> None:
    anchor, positive, negative = batch
    candidates = torch.cat([positive, negative[:2]])
    logits = 20 * F.normalize(anchor, dim=-1) @ F.normalize(candidates, dim=-1).T
    loss = MultipleNegativesRankingLoss()(inputs(anchor, positive, negative[:2], owner=[0, 1]))
    assert loss.item() == pytest.approx(cross_entropy(logits).mean().item(), rel=1e-5)


def test_a_hard_negative_close_to_its_anchor_raises_the_loss() -> None:
    eye = torch.eye(4)
    easy = MultipleNegativesRankingLoss()(inputs(eye, eye, -eye[:1], owner=[0]))
    hard = MultipleNegativesRankingLoss()(inputs(eye, eye, eye[:1] + 0.1, owner=[0]))
    assert hard > easy


def test_symmetric_mnrl_averages_both_directions(batch: tuple[torch.Tensor, ...]) -> None:
    anchor, positive, _ = batch
    a, p = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    expected = (cross_entropy(20 * a @ p.T) + cross_entropy(20 * p @ a.T)).mean() / 2
    loss = MultipleNegativesRankingLoss(symmetric=True)(inputs(anchor, positive))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_positives_of_the_same_anchor_are_not_negatives(batch: tuple[torch.Tensor, ...]) -> None:
    anchor, positive, _ = batch
    anchor = anchor.clone()
    anchor[1] = anchor[0]
    loss = MultipleNegativesRankingLoss()(inputs(anchor, positive, group=[0, 0, 1, 2]))
    logits = 20 * F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T
    logits[0, 1] = logits[1, 0] = float("-inf")
    assert loss.item() == pytest.approx(cross_entropy(logits).mean().item(), rel=1e-5)


def test_weighted_loss_weighs_each_anchor_by_its_score(batch: tuple[torch.Tensor, ...]) -> None:
    anchor, positive, _ = batch
    logits = 20 * F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T
    per_row = cross_entropy(logits)
    weight = [1.0, 0.5, 0.0, 0.25]
    loss = WeightedContrastiveLoss()(inputs(anchor, positive, weight=weight))
    expected = (torch.tensor(weight) * per_row).sum() / sum(weight)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    uniform = WeightedContrastiveLoss()(inputs(anchor, positive, weight=[0.3] * 4))
    assert uniform.item() == pytest.approx(
        MultipleNegativesRankingLoss()(inputs(anchor, positive)).item()
    )


def test_triplet_margin_on_cosine_similarity() -> None:
    anchor = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    positive = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    negative = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    loss = TripletMarginLoss(margin=0.2)(inputs(anchor, positive, negative, owner=[0, 1]))
    # row 0: cos(a,n)=0, cos(a,p)=1 -> max(0, -0.8) = 0; row 1: 0.7071 - 0 + 0.2
    assert loss.item() == pytest.approx((math.sqrt(0.5) + 0.2) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="exactly one hard negative"):
        TripletMarginLoss()(inputs(anchor, positive, negative[:1], owner=[0]))


def test_gradients_reach_the_embeddings(batch: tuple[torch.Tensor, ...]) -> None:
    anchor, positive, negative = (t.clone().requires_grad_() for t in batch)
    MultipleNegativesRankingLoss()(
        inputs(anchor, positive, negative, owner=[0, 1, 2, 3])
    ).backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (anchor, positive, negative))


@pytest.mark.parametrize(
    ("name", "kind", "symmetric"),
    [
        ("mnrl", MultipleNegativesRankingLoss, False),
        ("mnrl_symmetric", MultipleNegativesRankingLoss, True),
        ("weighted", WeightedContrastiveLoss, None),
        ("triplet", TripletMarginLoss, None),
    ],
)
def test_losses_are_chosen_by_name(name: str, kind: type, symmetric: bool | None) -> None:
    loss = build_loss(name, LossSpec(scale=10, margin=0.3))  # type: ignore[arg-type]
    assert isinstance(loss, kind)
    if symmetric is not None:
        assert loss.symmetric is symmetric  # type: ignore[union-attr]
