"""Print the trial config of the Debian quality run: one epoch with the defaults.

Why: the quality reference (`../shared/data/README.md`: nDCG@10 0.925 full, 0.920 LoRA, from
0.824 base, all-MiniLM-L6-v2) is measured by the trainer's own evaluation through the exact
command the operator's Jobs run, so this only writes the config that command reads:
training on the train split, evaluation on the test split (every anchor a query, the split's
positives the corpus), every hyperparameter at its default unless `--set` names it.

    python bench/debian_trial.py --model DIR --train debian-train.jsonl.gz \\
        --test debian-test.jsonl --method full --out /tmp/full > full.json
    python -m kubetune_trainer --config full.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from kubetune.contract import TrialConfig


def trial_config(
    model: Path,
    train: Path,
    test: Path,
    method: str,
    out: Path,
    hyperparameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The trial config as a JSON document; `hyperparameters` overrides defaults."""
    document: dict[str, Any] = {
        "trial": {
            "namespace": "bench",
            "task": "debian",
            "lineage": "minilm-debian",
            "iteration": 0,
            "index": 0,
            "name": f"debian-{method}",
        },
        "base_model": str(model.resolve()),
        "data": {"train": [str(train.resolve())], "validation": [str(test.resolve())]},
        "method": method,
        "output": {"checkpoint_uri": str(out.resolve() / "model")},
    }
    if hyperparameters:
        document["hyperparameters"] = hyperparameters
    TrialConfig.model_validate(document)
    return document


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a hyperparameter to override, e.g. seed=1 or weight_decay=0",
    )
    args = parser.parse_args()
    overrides = {key: json.loads(value) for key, _, value in (s.partition("=") for s in args.set)}
    document = trial_config(args.model, args.train, args.test, args.method, args.out, overrides)
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
