"""End to end on the Debian slice with the real small model, on CPU: full and LoRA fine-tuning
raise nDCG@10, the checkpoint loads in sentence-transformers and reproduces the reported
metric, training is deterministic, and an interrupted run resumes where it stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from kubetune.contract import DataSpec, TrialConfig, TrialProgress, TrialResult
from kubetune_trainer.data import load_data
from kubetune_trainer.evaluation import RetrievalSet, ranking_metrics, search
from kubetune_trainer.storage import Storage
from kubetune_trainer.tracking import LogPoint, Observer
from kubetune_trainer.train import inductor_options
from kubetune_trainer.trial import run_trial
from tests.trainer.conftest import DEV, config_document


@dataclass(frozen=True)
class CliRun:
    out: Path
    returncode: int
    termination_message: str
    result: TrialResult


@pytest.fixture(scope="module")
def full_run(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> CliRun:
    """A short full fine-tune through the exact command the operator's Jobs run."""
    out = tmp_path_factory.mktemp("full")
    config_file = out / "trial.json"
    config_file.write_text(json.dumps(config_document(model_dir, out)))
    message_file = out / "termination-log"
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(sys.path),
        "KUBETUNE_TERMINATION_MESSAGE_PATH": str(message_file),
    }
    process = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer", "--config", str(config_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-5000:]
    result = TrialResult.model_validate_json((out / "result.json").read_text())
    return CliRun(out, process.returncode, message_file.read_text(), result)


def sentence_transformers_metrics(checkpoint: Path) -> dict[str, float]:
    """Evaluate a checkpoint with sentence-transformers' own encoding, our metrics."""
    spec = DataSpec.model_validate({"train": [str(DEV)], "validation": [str(DEV)]})
    data = RetrievalSet.from_examples(load_data(spec, Storage(), checkpoint / "cache").eval)
    model = SentenceTransformer(str(checkpoint), device="cpu")
    queries = model.encode(data.queries, convert_to_tensor=True, normalize_embeddings=True)
    corpus = model.encode(data.corpus, convert_to_tensor=True, normalize_embeddings=True)
    return ranking_metrics(search(queries, corpus, 100), data.relevant)


def test_full_fine_tuning_raises_ndcg(full_run: CliRun) -> None:
    result = full_run.result
    assert result.objective.metric == "ndcg@10"
    assert result.value > result.baseline_value
    assert result.metrics["mrr@10"] > result.baseline_metrics["mrr@10"]
    assert result.steps == 10 and result.resumed_from_step is None
    assert result.parameters["hyperparameters.batch_size"] == 32
    assert result.samples_per_second > 0
    assert full_run.termination_message.startswith(f"ok ndcg@10={result.value:.4f}")
    progress = TrialProgress.model_validate_json((full_run.out / "progress.json").read_text())
    assert (progress.phase, progress.step, progress.total_steps) == ("done", 10, 10)
    assert progress.baseline_metrics == result.baseline_metrics
    assert not (full_run.out / "resume" / "state.pt").exists()


def test_the_checkpoint_loads_in_sentence_transformers_with_the_reported_metric(
    full_run: CliRun,
) -> None:
    checkpoint = Path(full_run.result.checkpoint_uri)
    assert {"modules.json", "sentence_bert_config.json", "1_Pooling"} <= set(os.listdir(checkpoint))
    metrics = sentence_transformers_metrics(checkpoint)
    for name, value in full_run.result.metrics.items():
        assert metrics[name] == pytest.approx(value, abs=2e-3), name


class CrashAt(Observer):
    """Stands in for a killed pod: fails the run at a given step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_log(self, point: LogPoint) -> None:
        if point.step == self.step:
            raise RuntimeError(f"pod killed at step {point.step}")


def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(
    full_run: CliRun, model_dir: Path, tmp_path: Path
) -> None:
    document = config_document(model_dir, tmp_path)
    document["hyperparameters"]["checkpoint_every_steps"] = 4
    config = TrialConfig.model_validate(document)
    with pytest.raises(RuntimeError, match="pod killed at step 6"):
        run_trial(config, extra_observers=[CrashAt(6)])
    assert (tmp_path / "resume" / "state.pt").exists()
    result = run_trial(config)
    assert result.resumed_from_step == 4
    assert result.steps == 10
    assert result.baseline_metrics == pytest.approx(full_run.result.baseline_metrics, abs=1e-9)
    assert result.metrics == pytest.approx(full_run.result.metrics, abs=1e-6)
    resumed = load_file(tmp_path / "model" / "model.safetensors")
    straight = load_file(Path(full_run.result.checkpoint_uri) / "model.safetensors")
    for name, tensor in straight.items():
        torch.testing.assert_close(resumed[name], tensor, atol=1e-6, rtol=1e-5, msg=name)


def test_the_same_seed_gives_the_same_model(tmp_path: Path, model_dir: Path) -> None:
    def train(name: str, seed: int) -> dict[str, torch.Tensor]:
        document = config_document(
            model_dir,
            tmp_path / name,
            hyperparameters={"batch_size": 16, "max_steps": 3, "max_seq_length": 32, "seed": seed},
            data={"train": [str(DEV)], "validation": [str(DEV)], "max_eval_samples": 20},
        )
        run_trial(TrialConfig.model_validate(document))
        return load_file(tmp_path / name / "model" / "model.safetensors")

    first, second, other_seed = train("a", 7), train("b", 7), train("c", 8)
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not all(torch.equal(first[name], other_seed[name]) for name in first)


def test_lora_fine_tuning_raises_ndcg_and_exports_a_merged_model(
    model_dir: Path, tmp_path: Path
) -> None:
    from mlflow.tracking import MlflowClient

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    document = config_document(
        model_dir,
        tmp_path,
        method="lora",
        mlflow={"tracking_uri": tracking_uri, "tags": {"team": "search"}},
    )
    document["hyperparameters"].pop("learning_rate")
    config = TrialConfig.model_validate(document)
    assert config.learning_rate == 5e-4
    result = run_trial(config)
    assert result.value > result.baseline_value
    checkpoint = Path(result.checkpoint_uri)
    assert not (checkpoint / "adapter_config.json").exists()
    metrics = sentence_transformers_metrics(checkpoint)
    assert metrics["ndcg@10"] == pytest.approx(result.value, abs=2e-3)

    client = MlflowClient(tracking_uri)
    assert result.mlflow_run_id is not None
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "tests/debian"
    assert run.data.params["method"] == "lora"
    assert run.data.params["lora.r"] == "16"
    assert run.data.tags["team"] == "search"
    assert run.data.tags["kubetune.trial"] == "debian-0-0"
    assert run.data.metrics["eval/ndcg_at_10"] == pytest.approx(result.value)
    assert run.data.metrics["baseline/ndcg_at_10"] == pytest.approx(result.baseline_value)
    losses = client.get_metric_history(run.info.run_id, "train/loss")
    assert [point.step for point in losses] == [2, 4, 6, 8, 10]


@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_the_compiled_encoder_is_not_guarded_on_its_token_count(cuda_graphs: bool) -> None:
    """Inductor's layer-norm fusion heuristic would guard the compiled encoder on the token
    count, and a batch across that line would recompile it mid-run; the trainer's options
    turn its size checks off, and Inductor knows every option it is given."""
    from torch._inductor import config

    options = inductor_options(cuda_graphs)
    assert options["triton.mix_order_reduction_non_strict_mode"] is True
    assert options.get("triton.cudagraphs", False) is cuda_graphs
    with config.patch(options):
        assert config.triton.mix_order_reduction_non_strict_mode
