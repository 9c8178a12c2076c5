"""The training losses, chosen by name (`kubetune.contract.LossName`) through `build_loss`.

Each loss takes the embeddings of one batch (`LossInputs`) and returns a scalar; none of
them runs the encoder, so the same loss serves plain training and gradient caching (which
embeds the batch in pieces and needs the loss on precomputed embeddings). All similarities
are cosine similarities.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kubetune.contract import LossName, LossSpec


@dataclass
class LossInputs:
    """Embeddings of a batch: `anchor` and `positive` [B, D]; `negative` [M, D] with
    `negative_owner` [M] (the anchor row each belongs to); `weight` [B]; `group` [B] (equal
    values share an anchor text)."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor | None
    negative_owner: Tensor | None
    weight: Tensor
    group: Tensor


def _mask_same_anchor(logits: Tensor, group: Tensor) -> Tensor:
    """-inf where column j < B is another example's positive with the same anchor text: a
    second relevant document for the query, not a negative."""
    size = group.shape[0]
    same = group[:, None] == group[None, :]
    same &= ~torch.eye(size, dtype=torch.bool, device=group.device)
    if logits.shape[1] > size:
        same = F.pad(same, (0, logits.shape[1] - size), value=False)
    return logits.masked_fill(same, float("-inf"))


def _info_nce(inputs: LossInputs, scale: float, weighted: bool, symmetric: bool) -> Tensor:
    anchor = F.normalize(inputs.anchor.float(), dim=-1)
    positive = F.normalize(inputs.positive.float(), dim=-1)
    candidates = positive
    if inputs.negative is not None:
        candidates = torch.cat([positive, F.normalize(inputs.negative.float(), dim=-1)])
    labels = torch.arange(anchor.shape[0], device=anchor.device)
    logits = _mask_same_anchor(scale * anchor @ candidates.T, inputs.group)
    per_example = F.cross_entropy(logits, labels, reduction="none")
    if symmetric:
        backward = _mask_same_anchor(scale * positive @ anchor.T, inputs.group)
        per_example = (per_example + F.cross_entropy(backward, labels, reduction="none")) / 2
    if not weighted:
        return per_example.mean()
    weight = inputs.weight.float()
    return (weight * per_example).sum() / weight.sum().clamp_min(1e-6)


class MultipleNegativesRankingLoss:
    """In-batch negatives (InfoNCE, as sentence-transformers' MultipleNegativesRankingLoss).

    Inputs: anchors and positives; hard negatives when present (triplets, sessions) join the
    candidates of every anchor. Anchor i must rank its own positive first among all positives
    and negatives of the batch; `scale` is the inverse temperature. With `symmetric`, each
    positive must also pick out its anchor among the batch's anchors, and the two losses are
    averaged. Larger batches give more negatives and usually a better model.
    """

    in_batch_negatives = True

    def __init__(self, scale: float = 20.0, symmetric: bool = False) -> None:
        self.scale = scale
        self.symmetric = symmetric

    def __call__(self, inputs: LossInputs) -> Tensor:
        return _info_nce(inputs, self.scale, weighted=False, symmetric=self.symmetric)


class WeightedContrastiveLoss:
    """In-batch negatives weighted by graded relevance, in the spirit of Generalized
    Contrastive Learning (Zhu et al., 2024).

    Inputs: scored pairs, `weight` = score / largest score in [0, 1]. Each anchor's InfoNCE
    term counts in proportion to its pair's relevance, so a strongly relevant pair pulls harder
    than a weak one, and a zero-score pair only serves as a negative for the other anchors.
    """

    in_batch_negatives = True

    def __init__(self, scale: float = 20.0) -> None:
        self.scale = scale

    def __call__(self, inputs: LossInputs) -> Tensor:
        return _info_nce(inputs, self.scale, weighted=True, symmetric=False)


class TripletMarginLoss:
    """Triplet loss on cosine similarity: max(0, cos(a, n) - cos(a, p) + margin).

    Inputs: every example needs exactly one hard negative (triplets, or sessions with a
    shown-but-not-clicked result; the data loader drops the others, counted). No in-batch
    negatives, so the batch size does not change what is learned, only its noise.
    """

    in_batch_negatives = False

    def __init__(self, margin: float = 0.2) -> None:
        self.margin = margin

    def __call__(self, inputs: LossInputs) -> Tensor:
        if inputs.negative is None or inputs.negative_owner is None:
            raise ValueError("the triplet loss needs a hard negative for every example")
        if inputs.negative.shape[0] != inputs.anchor.shape[0]:
            raise ValueError("the triplet loss needs exactly one hard negative per example")
        anchor = inputs.anchor.float()[inputs.negative_owner]
        positive = inputs.positive.float()[inputs.negative_owner]
        negative = inputs.negative.float()
        gap = F.cosine_similarity(anchor, negative) - F.cosine_similarity(anchor, positive)
        return F.relu(gap + self.margin).mean()


Loss = MultipleNegativesRankingLoss | WeightedContrastiveLoss | TripletMarginLoss


def build_loss(name: LossName, spec: LossSpec) -> Loss:
    """The loss called `name`, with its settings from `spec`."""
    if name == "mnrl":
        return MultipleNegativesRankingLoss(spec.scale)
    if name == "mnrl_symmetric":
        return MultipleNegativesRankingLoss(spec.scale, symmetric=True)
    if name == "weighted":
        return WeightedContrastiveLoss(spec.scale)
    return TripletMarginLoss(spec.margin)
