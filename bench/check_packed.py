"""Check on the GPU that the packed training forward computes the padded one's function.

Why: the CPU tests compare the packed BERT path with the Hugging Face forward through the
padded SDPA fallback; on CUDA the packed path runs the memory-efficient attention kernel
with variable lengths instead, and compiled. This compares, on one real batch in bf16 with
dropout off, the embeddings and the loss gradients of the packed path (eager, compiled, and
compiled with CUDA graphs over a batch padded with dummy texts, as the trainer runs it) with
the Hugging Face padded forward, as relative errors ||x - ref|| / ||ref||; bf16 lands near
1e-3 to 1e-2. With dropout on (training mode), it compares how far each path's embeddings
move from the dropout-free ones (the packed path has hidden dropout but none on the
attention probabilities), and checks that replaying the random state replays the packed
forward, as gradient caching needs.

The packed paths run in training mode with every dropout at 0, so that the comparisons cover
what the packed path does in training only (its residual stream in bf16). `--candidate NAME`
puts in a change of `bench/candidates.py`.

    python bench/check_packed.py --model DIR --data debian-train.jsonl.gz [--candidate NAME]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import candidates
import torch

from kubetune.contract import DataSpec, LossSpec
from kubetune_trainer.batching import TokenizedExamples, pad
from kubetune_trainer.data import read_examples
from kubetune_trainer.losses import build_loss
from kubetune_trainer.model import load_model
from kubetune_trainer.step import embed, loss_inputs
from kubetune_trainer.storage import Storage


def relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--candidate", action="append", choices=sorted(candidates.CANDIDATES))
    args = parser.parse_args()
    device = torch.device("cuda")
    spec = DataSpec.model_validate({"train": [str(args.data)]})
    examples = read_examples(Storage(), spec.train, spec, Path("/tmp/check-data"))
    examples = examples[: args.batch_size]
    model = load_model(args.model, str(args.model))
    candidates.apply(model.encoder, args.candidate or [])
    model.encoder.to(device).eval()
    dropouts = {m: m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)}

    def packed_mode() -> None:
        """Training mode with every dropout at 0."""
        model.encoder.train()
        for dropout in dropouts:
            dropout.p = 0.0

    data = TokenizedExamples(examples, model, 128)
    batch = data.collate(list(range(len(examples)))).to(device)
    graph_batch = data.collate(list(range(len(examples))), graph_shapes=True).to(device)
    texts = [e.anchor for e in examples] + [e.positive for e in examples]
    padded = pad(model.tokenize(texts, 128), model.pad_token_id).to(device)
    loss_fn = build_loss("mnrl", LossSpec())
    parameters = [p for p in model.encoder.parameters() if p.requires_grad]

    def run(forward: object) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.encoder.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            embeddings = forward()  # type: ignore[operator]
        loss_fn(loss_inputs(batch, embeddings)).backward()
        grads = [
            p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for p in parameters
        ]
        return embeddings.detach().clone(), grads

    def padded_forward() -> torch.Tensor:
        return model.encoder.embed_padded(padded.input_ids, padded.attention_mask)

    def reference() -> torch.Tensor:
        model.encoder.eval()
        return padded_forward()

    def compiled_forward() -> torch.Tensor:
        return embed(compiled, batch.texts, 128)

    def packed_eager() -> torch.Tensor:
        packed_mode()
        return embed(model.encoder, batch.texts, 128)

    compiled = torch.compile(model.encoder)

    def packed_compiled() -> torch.Tensor:
        packed_mode()
        return compiled_forward()

    graphs = torch.compile(model.encoder, mode="reduce-overhead")

    def packed_graphs() -> torch.Tensor:
        packed_mode()
        torch.compiler.cudagraph_mark_step_begin()
        return embed(graphs, graph_batch.texts, 128)

    ref_embeddings, ref_grads = run(reference)
    print(f"real tokens {batch.texts.tokens} in {len(batch.texts)} texts")
    print(
        f"with dummies: {graph_batch.texts.offsets[-1]} tokens in "
        f"{len(graph_batch.texts.offsets) - 1} texts"
    )
    paths = (
        ("packed eager", packed_eager, 1),
        ("packed compiled", packed_compiled, 1),
        # cudagraph trees warm up on the first call, record on the second, replay after
        ("packed compiled, CUDA graphs, 3rd call", packed_graphs, 3),
    )
    for name, forward, calls in paths:
        for _ in range(calls):
            embeddings, grads = run(forward)
        flat = torch.cat([g.flatten() for g in grads])
        ref_flat = torch.cat([g.flatten() for g in ref_grads])
        print(
            f"{name}: embeddings rel. error {relative(embeddings, ref_embeddings):.2e}, "
            f"gradient rel. error {relative(flat, ref_flat):.2e}"
        )
    for dropout, rate in dropouts.items():
        dropout.p = rate
    check_dropout(model.encoder, compiled_forward, padded_forward, ref_embeddings, run)


def check_dropout(
    encoder: torch.nn.Module,
    packed: Callable[[], torch.Tensor],
    reference: Callable[[], torch.Tensor],
    still: torch.Tensor,
    run: Callable[[Callable[[], torch.Tensor]], tuple[torch.Tensor, list[torch.Tensor]]],
) -> None:
    """Dropout's effect on each path (mean of 5 draws), and replay of the packed one."""
    encoder.train()

    def moved(forward: Callable[[], torch.Tensor]) -> float:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            return sum(relative(forward(), still) for _ in range(5)) / 5

    print(f"dropout on: embeddings move {moved(reference):.3e} (Hugging Face padded)")
    print(f"dropout on: embeddings move {moved(packed):.3e} (packed)")
    state = torch.cuda.get_rng_state()
    first, first_grads = run(packed)
    torch.cuda.set_rng_state(state)
    again, again_grads = run(packed)
    flat, flat_again = (
        torch.cat([g.flatten() for g in grads]) for grads in (first_grads, again_grads)
    )
    # the backward adds in a varying order (atomics), so gradients match only to rounding
    print(
        f"replayed random state: embeddings differ {relative(again, first):.1e}, "
        f"gradients {relative(flat_again, flat):.1e}"
    )


if __name__ == "__main__":
    main()
