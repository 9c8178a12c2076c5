"""How many word-embedding rows a training step touches: the distinct token ids of each step's
batch (`TokenizedExamples._token_rows`), which is what the gradient buckets send of the word
embeddings on several GPUs (`kubetune_trainer.sync`). Runs on CPU.

    python bench/token_rows.py --data .bench/debian-train.jsonl.gz --model .bench/minilm
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from kubetune.contract import DataSpec
from kubetune_trainer.batching import BatchSchedule, TokenizedExamples
from kubetune_trainer.data import read_examples
from kubetune_trainer.model import load_model
from kubetune_trainer.storage import Storage


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="training pairs (JSONL)")
    parser.add_argument("--model", type=Path, required=True, help="model directory (tokenizer)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    spec = DataSpec.model_validate({"train": [str(args.data)], "format": "pairs"})
    examples = read_examples(Storage(), spec.train, spec, Path(tempfile.mkdtemp()))
    model = load_model(args.model, str(args.model))
    data = TokenizedExamples(examples, model, args.max_length)
    schedule = BatchSchedule(len(data), args.batch_size, args.seed)
    rows, tokens = [], []
    for step in range(args.steps):
        indices = np.asarray(schedule.indices(step))
        rows.append(len(data._token_rows(indices)))
        tokens.append(int(data._tokens(indices).sum()))
    vocabulary = model.encoder.transformer.get_input_embeddings().weight.shape[0]
    print(
        f"{len(examples)} examples, {args.steps} steps of {args.batch_size}: distinct token ids "
        f"per step min {min(rows)}, median {statistics.median(rows):.0f}, max {max(rows)} "
        f"of {vocabulary} rows; tokens per step median {statistics.median(tokens):.0f}"
    )


if __name__ == "__main__":
    main()
