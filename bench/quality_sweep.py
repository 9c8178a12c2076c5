"""Which training settings close the gap to the Debian quality reference, over several seeds.

Why: one epoch on the Debian pairs must reach the reference of sentence-transformers' own
trainer (`../shared/data/README.md`), and a difference of 0.002 nDCG@10 is within what a seed
can move. This runs the operator's own trainer command (`python -m kubetune_trainer`) for
each variant, method and seed, several processes at a time on the GPUs it sees, reads the
trainer's own evaluation from each `result.json`, and prints every run and then the mean
and spread per variant and method.

A variant is a set of hyperparameters plus whether BERT's attention-probability dropout is
on; "on" runs the trainer through `bench/attention_dropout.py`, which adds it to the packed
path (the trainer itself applies none). A variant with candidates runs the trainer through
`bench/candidates.py`, with those changes in its model.

    python bench/quality_sweep.py --model DIR --train debian-train.jsonl.gz \\
        --test debian-test.jsonl --variant current --variant reference --seeds 42 43 44 \\
        --work /tmp/sweep --out sweep.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from debian_trial import trial_config


@dataclass(frozen=True)
class Variant:
    hyperparameters: dict[str, Any]
    attention_dropout: bool
    candidates: tuple[str, ...] = ()
    """Changes of `bench/candidates.py` to train with."""


REFERENCE = {"weight_decay": 0.0, "warmup_ratio": 0.0, "max_seq_length": 256}
"""What sentence-transformers' trainer does by default for all-MiniLM-L6-v2: no weight decay,
no warm-up, the model's own maximum length (256)."""

VARIANTS = {
    # the trainer's defaults before 2026-11-22
    "current": Variant({"weight_decay": 0.01, "warmup_ratio": 0.1, "max_seq_length": 128}, False),
    "reference": Variant(REFERENCE, True),
    "reference-len128": Variant(REFERENCE | {"max_seq_length": 128}, True),
    "reference-warmup": Variant(REFERENCE | {"warmup_ratio": 0.1}, True),
    "reference-decay": Variant(REFERENCE | {"weight_decay": 0.01}, True),
    "reference-no-attn-dropout": Variant(REFERENCE, False),
    # the defaults this sweep chose (weight decay, warm-up and length from the model)
    "defaults": Variant({}, False),
    # the defaults with candidate changes that are not in the trainer
    "no-hidden-dropout": Variant({}, False, ("no-hidden-dropout",)),
}


@dataclass
class Run:
    variant: str
    method: str
    seed: int
    ndcg_at_10: float | None
    metrics: dict[str, float]
    train_seconds: float | None
    wall_seconds: float


def run_one(
    args: argparse.Namespace, name: str, method: str, seed: int, slot: int, gpus: int
) -> Run:
    variant = VARIANTS[name]
    out = args.work / f"{name}-{method}-{seed}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    hyper = variant.hyperparameters | {"seed": seed}
    config = trial_config(args.model, args.train, args.test, method, out, hyper)
    (out / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "kubetune_trainer"]
    if variant.attention_dropout:
        command = [sys.executable, str(Path(__file__).with_name("attention_dropout.py"))]
    if variant.candidates:
        script = Path(__file__).with_name("candidates.py")
        command = [sys.executable, str(script), ",".join(variant.candidates)]
    env = os.environ | {"CUDA_VISIBLE_DEVICES": str(slot % gpus), "OMP_NUM_THREADS": "2"}
    started = time.perf_counter()
    with open(out / "trainer.log", "w") as log:
        subprocess.run(
            [*command, "--config", str(out / "config.json")],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            check=False,
        )
    wall = time.perf_counter() - started
    result_file = out / "result.json"
    if not result_file.exists():
        tail = (out / "trainer.log").read_text()[-2000:]
        print(f"FAILED {name} {method} {seed}:\n{tail}", flush=True)
        return Run(name, method, seed, None, {}, None, wall)
    result = json.loads(result_file.read_text())
    return Run(
        name,
        method,
        seed,
        result["metrics"]["ndcg@10"],
        result["metrics"],
        result["train_seconds"],
        wall,
    )


def summary(runs: list[Run]) -> None:
    print(f"\n{'variant':<28} {'method':<5} {'n':>2} {'mean':>7} {'sd':>7} {'min':>7} {'max':>7}")
    keys = sorted({(run.variant, run.method) for run in runs}, key=lambda k: (k[1], k[0]))
    for variant, method in keys:
        values = [
            run.ndcg_at_10
            for run in runs
            if (run.variant, run.method) == (variant, method) and run.ndcg_at_10 is not None
        ]
        if not values:
            print(f"{variant:<28} {method:<5}  0")
            continue
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        print(
            f"{variant:<28} {method:<5} {len(values):>2} {statistics.mean(values):>7.4f} "
            f"{spread:>7.4f} {min(values):>7.4f} {max(values):>7.4f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), required=True)
    parser.add_argument("--method", action="append", choices=["full", "lora"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--parallel", type=int, default=6, help="trainer processes at a time")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="every run, as JSON")
    args = parser.parse_args()
    args.model = args.model.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    gpus = max(1, torch.cuda.device_count())
    jobs = [
        (name, method, seed)
        for seed in args.seeds
        for method in args.method or ["full", "lora"]
        for name in args.variant
    ]
    runs: list[Run] = []
    with ThreadPoolExecutor(args.parallel) as pool:
        futures = [
            pool.submit(run_one, args, name, method, seed, slot, gpus)
            for slot, (name, method, seed) in enumerate(jobs)
        ]
        for future in as_completed(futures):
            run = future.result()
            runs.append(run)
            print(json.dumps(asdict(run)), flush=True)
            args.out.write_text(json.dumps([asdict(r) for r in runs], indent=1))
    summary(runs)


if __name__ == "__main__":
    main()
