"""Candidate changes to the trainer's packed BERT forward, kept here until a GPU measures them.

Why: a change to the trainer lands with its speed and its quality measured on a GPU, and GPU
time comes in short sessions, some with no GPU at all. Until then a change lives here as a
named candidate that changes a loaded model, or a function of `kubetune_trainer.model`, so
that one GPU session can measure it beside the trainer as it is:
`bench/trainer_speed.py --candidate NAME` for speed, and the trainer's own command for
quality (`bench/quality_sweep.py` runs `python bench/candidates.py NAMES --config F` for a
variant with candidates). `tests/bench/test_candidates.py` checks on CPU what each computes.

- `no-hidden-dropout`: BERT's hidden dropout off, to see what dropout costs in time and in
  quality.

The bf16 residual stream and the keep-bit dropout (`kubetune_trainer.dropout`) were
candidates here; measured faster at the same quality, they are the trainer's own. The
short-attention, bias-gelu and inline-dropout candidates, measured on a GPU (2026-12-05),
were none of them faster than the trainer as it is and were removed; docs/benchmarks.md
keeps their figures.

    python bench/candidates.py no-hidden-dropout --config trial.json
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

from torch import nn

from kubetune_trainer import model as model_module


def _bert(encoder: nn.Module) -> nn.Module:
    bert = model_module._bert(encoder.transformer)
    if bert is None:
        raise ValueError("the candidates apply to BERT models only")
    return bert


def _hidden_blocks(encoder: nn.Module) -> list[nn.Module]:
    """The modules of a BERT encoder that hold its hidden dropouts and LayerNorms: the
    embeddings, and each layer's attention output and output."""
    bert = _bert(encoder)
    blocks = [bert.embeddings]
    for layer in bert.encoder.layer:
        blocks += [layer.attention.output, layer.output]
    return blocks


def _no_hidden_dropout(encoder: nn.Module) -> None:
    for block in _hidden_blocks(encoder):
        block.dropout.p = 0.0


CANDIDATES: dict[str, Callable[[nn.Module], None]] = {
    "no-hidden-dropout": _no_hidden_dropout,
}


def apply(encoder: nn.Module, names: Iterable[str]) -> None:
    """Put the named candidates into `encoder` (a `kubetune_trainer.model.Encoder` of a BERT
    model) and the trainer's packed path."""
    for name in names:
        if name not in CANDIDATES:
            raise ValueError(f"unknown candidate {name!r}; known: {', '.join(CANDIDATES)}")
        CANDIDATES[name](encoder)


def main(argv: list[str]) -> int:
    """The trainer's command (`python -m kubetune_trainer ARGS`) with the candidates of the
    first argument (comma-separated) in every model it loads."""
    from kubetune_trainer import cli, launch, trial

    if not argv or argv[0].startswith("-"):
        print("usage: python bench/candidates.py NAME[,NAME...] TRAINER-ARGS...", file=sys.stderr)
        print(f"candidates: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    names = [name for name in argv[0].split(",") if name]
    unknown = sorted(set(names) - set(CANDIDATES))
    if unknown:
        print(f"unknown candidates {unknown}; known: {', '.join(CANDIDATES)}", file=sys.stderr)
        return 2
    if not launch.is_worker() and launch.process_count() > 1:
        # the trainer's own launcher would start ranks without the candidates
        print(
            "several devices: run one process (KUBETUNE_PROCESSES=1), or one per device "
            "with torchrun --nproc-per-node N bench/candidates.py ...",
            file=sys.stderr,
        )
        return 2
    load = trial.load_model

    def load_with_candidates(*args: object, **kwargs: object) -> model_module.EmbeddingModel:
        loaded = load(*args, **kwargs)  # type: ignore[arg-type]
        apply(loaded.encoder, names)
        return loaded

    trial.load_model = load_with_candidates
    return cli.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
