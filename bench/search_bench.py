"""Run one hyperparameter search on one GPU the way the operator runs it, and print the trials.

Why: `docs/benchmarks.md` compares TPE with random search on the Debian data with MiniLM, and
measures the GPU time that median pruning saves. Those figures must come from the operator's
own decisions and the trainer's own command, not from a re-implementation: suggestions come
from `kubetune.decide.sampling.sampler_for` (the study rebuilt from the recorded trials each
time), trial configs from `kubetune.decide.trialconfig.build_trial_config`, and the stopping
decision from `kubetune.decide.study.prune_decision` applied to the trial's progress file,
which is polled as the operator polls it. A pruned trial's process is killed, as deleting
its Job would. Trials run one at a time, so each trial's wall time is its GPU time.

    python bench/search_bench.py --model DIR --train TRAIN --test TEST \\
        --algorithm tpe --trials 8 --seed 0 [--prune] --work /tmp/search --out OUT.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubetune.api import FineTuningTaskSpec, StepValue, TrialStatus
from kubetune.contract import TrialProgress, TrialResult
from kubetune.decide.sampling import sampler_for
from kubetune.decide.study import prune_decision
from kubetune.decide.trialconfig import build_trial_config

SEARCH_SPACE = [
    {"name": "learningRate", "float": {"min": 1e-6, "max": 1e-2, "log": True}},
    {"name": "warmupRatio", "float": {"min": 0.0, "max": 0.5}},
    {"name": "loss.scale", "float": {"min": 5.0, "max": 50.0}},
]
METRIC = "ndcg@10"


def task_spec(args: argparse.Namespace) -> FineTuningTaskSpec:
    hyperparameters: dict[str, Any] = {
        "fixed": {
            "batchSize": 256,
            "maxSteps": args.steps,
            "evalEverySteps": args.eval_every,
            "checkpointEverySteps": 100000,
        },
        "searchSpace": SEARCH_SPACE,
        "algorithm": args.algorithm,
        "maxTrials": args.trials,
        "seed": args.seed,
    }
    if args.prune:
        hyperparameters["earlyStopping"] = {"startupTrials": args.prune_startup}
    return FineTuningTaskSpec.model_validate(
        {
            "modelRef": {"name": "minilm"},
            "dataset": {
                "train": [str(args.train.resolve())],
                "validation": [str(args.test.resolve())],
                "maxEvalSamples": args.eval_samples,
            },
            "objective": {"metric": METRIC},
            "hyperparameters": hyperparameters,
        }
    )


def _progress(path: Path) -> TrialProgress | None:
    try:
        return TrialProgress.model_validate_json(path.read_text())
    except (OSError, ValueError):
        return None  # not written yet, or caught mid-write


def run_trial(
    spec: FineTuningTaskSpec,
    trial: TrialStatus,
    trials: list[TrialStatus],
    args: argparse.Namespace,
) -> float:
    """Run the trainer for `trial`, updating it in place; returns its wall seconds."""
    config = build_trial_config(
        spec=spec,
        namespace="bench",
        task="search",
        model="minilm",
        iteration=1,
        index=trial.index,
        name=trial.name,
        parameters=trial.parameters,
        starting_model=str(args.model.resolve()),
        checkpoint_uri=trial.checkpoint_uri,
        experiment=None,
    )
    folder = Path(trial.checkpoint_uri).parent
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.json"
    config_path.write_text(config.model_dump_json())
    assert config.output.progress_uri is not None and config.output.result_uri is not None
    progress_path = Path(config.output.progress_uri)
    log = (folder / "trainer.log").open("wb")
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer", "--config", str(config_path)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    trial.phase = "Running"
    rule = spec.hyperparameters.early_stopping
    while process.poll() is None:
        time.sleep(args.poll)
        progress = _progress(progress_path)
        if progress is None:
            continue
        trial.evaluations = [
            StepValue(step=e.step, value=e.metrics[METRIC]) for e in progress.evaluations
        ] or None
        if rule is None or process.poll() is not None:
            continue
        at = prune_decision(trial, trials, rule, spec.objective.direction)
        if at is not None:
            process.kill()
            process.wait()
            trial.phase, trial.pruned = "Pruned", at
    seconds = time.monotonic() - started
    log.close()
    if trial.phase == "Pruned":
        return seconds
    if process.returncode != 0:
        trial.phase = "Failed"
        return seconds
    result = TrialResult.model_validate_json(Path(config.output.result_uri).read_text())
    trial.phase, trial.metric, trial.baseline = "Succeeded", result.value, result.baseline_value
    points = {e.step: e.value for e in trial.evaluations or []} | {result.steps: result.value}
    trial.evaluations = [StepValue(step=s, value=v) for s, v in sorted(points.items())]
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--algorithm", choices=["random", "tpe"], required=True)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--eval-samples", type=int, default=2000)
    parser.add_argument("--prune", action="store_true")
    parser.add_argument("--prune-startup", type=int, default=2)
    parser.add_argument("--poll", type=float, default=0.5)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = task_spec(args)
    sampler = sampler_for(spec.hyperparameters, spec.objective.direction)
    trials: list[TrialStatus] = []
    rows = []
    for index in range(args.trials):
        origin = sampler.origin(trials)
        trial = TrialStatus(
            index=index,
            name=f"search-t{index}",
            parameters=sampler.suggest(index, trials),
            origin=origin,
            phase="Pending",
            checkpoint_uri=str((args.work / f"trial-{index}" / "model").resolve()),
        )
        seconds = run_trial(spec, trial, trials, args)
        trials.append(trial)
        row = trial.to_json() | {"seconds": round(seconds, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    succeeded = [t.metric for t in trials if t.metric is not None]
    summary = {
        "algorithm": args.algorithm,
        "seed": args.seed,
        "prune": args.prune,
        "trials": args.trials,
        "best": max(succeeded) if succeeded else None,
        "pruned": sum(t.phase == "Pruned" for t in trials),
        "failed": sum(t.phase == "Failed" for t in trials),
        "seconds": round(sum(r["seconds"] for r in rows), 1),
    }
    print(json.dumps(summary), flush=True)
    args.out.write_text(json.dumps({"summary": summary, "trials": rows}, indent=2))


if __name__ == "__main__":
    main()
