"""Print the trial config of the Debian quality run: one epoch with the defaults.

Why: the quality reference (`../shared/data/README.md`: nDCG@10 0.925 full, 0.920 LoRA, from
0.824 base, all-MiniLM-L6-v2) is measured by the trainer's own evaluation through the exact
command the operator's Jobs run, so this only writes the config that command reads:
training on the train split, evaluation on the test split (every anchor a query, the split's
positives the corpus), every hyperparameter at its default.

    python bench/debian_trial.py --model DIR --train debian-train.jsonl.gz \\
        --test debian-test.jsonl --method full --out /tmp/full > full.json
    python -m kubetune_trainer --config full.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kubetune.contract import TrialConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--method", choices=["full", "lora"], default="full")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args()
    document = {
        "trial": {
            "namespace": "bench",
            "task": "debian",
            "lineage": "minilm-debian",
            "iteration": 0,
            "index": 0,
            "name": f"debian-{args.method}",
        },
        "base_model": str(args.model.resolve()),
        "data": {"train": [str(args.train.resolve())], "validation": [str(args.test.resolve())]},
        "method": args.method,
        "output": {"checkpoint_uri": str(args.out.resolve() / "model")},
    }
    TrialConfig.model_validate(document)
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
