"""A lineage end to end with the real trainer: two iterations, promotion, retention,
and a promoted checkpoint that sentence-transformers loads and that reproduces its metric."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from kubernetes import client
from mlflow.tracking import MlflowClient
from sentence_transformers import SentenceTransformer

from devcluster.state import ClusterInfo
from kubetune.clients.s3 import S3Location
from kubetune_trainer.evaluation import TOP_K, RetrievalSet, ranking_metrics, search
from tests.conftest import Kubectl
from tests.e2e.fixtures import (
    E2eData,
    OperatorProcess,
    apply,
    fine_tuning_task,
    get,
    tuned_model,
    wait_phase,
)


def _keys(s3, uri: str) -> list[str]:  # type: ignore[no-untyped-def]
    location = S3Location.parse(uri)
    prefix = f"{location.prefix}/" if location.prefix else ""
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=location.bucket, Prefix=prefix)
    return [o["Key"][len(prefix) :] for page in pages for o in page.get("Contents", [])]


def _download(s3, uri: str, target: Path) -> Path:  # type: ignore[no-untyped-def]
    location = S3Location.parse(uri)
    for relative in _keys(s3, uri):
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(location.bucket, location.key(relative), str(path))
    return target


def _evaluate(model_dir: Path, validation: Path, max_examples: int, max_length: int) -> float:
    """nDCG@10 of a checkpoint as sentence-transformers sees it, on the trainer's eval set."""
    from kubetune_trainer.data import Example

    rows = [json.loads(line) for line in validation.read_text().splitlines() if line.strip()]
    examples = [Example(anchor=r["anchor"], positive=r["positive"]) for r in rows][:max_examples]
    retrieval = RetrievalSet.from_examples(examples)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.max_seq_length = max_length
    queries = model.encode(retrieval.queries, convert_to_tensor=True, normalize_embeddings=True)
    corpus = model.encode(retrieval.corpus, convert_to_tensor=True, normalize_embeddings=True)
    rankings = search(queries.to(torch.float32), corpus.to(torch.float32), TOP_K)
    return ranking_metrics(rankings, retrieval.relevant)["ndcg@10"]


def test_two_iterations_promote_verify_and_supersede(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    batch: client.BatchV1Api,
    s3,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    devcluster: ClusterInfo,
    operator: OperatorProcess,
) -> None:
    apply(
        kubectl,
        tenant,
        tuned_model("minilm", e2e_data.base_model, retention=1),
        fine_tuning_task("first", "minilm", e2e_data, [2e-5, 1e-4, 3e-4]),
    )
    task = wait_phase(kubectl, tenant, "first", {"Succeeded", "Failed"})
    kubectl("wait", "-n", tenant, "--for=condition=Succeeded", "ftt/first", "--timeout=60s")
    status = task["status"]
    assert status["phase"] == "Succeeded", status
    selected = kubectl(
        "get", "-n", tenant, "ftt", "--field-selector", "status.phase=Succeeded", "-o", "name"
    ).stdout.split()
    assert selected == ["finetuningtask.kubetune.dev/first"]
    columns = kubectl("get", "-n", tenant, "ftt", "first").stdout.splitlines()
    assert columns[0].split() == ["NAME", "PHASE", "MODEL", "TRIALS", "BEST", "AGE"]
    assert columns[1].split()[:4] == ["first", "Succeeded", "minilm", "3/3"]
    trials = status["trials"]
    assert [t["phase"] for t in trials] == ["Succeeded"] * 3
    assert all(isinstance(t["metric"], float) and t["baseline"] > 0 for t in trials)
    assert {t["parameters"]["learningRate"] for t in trials} == {2e-5, 1e-4, 3e-4}
    best = max(trials, key=lambda t: t["metric"])
    assert status["bestTrial"]["name"] == best["name"]

    model = get(kubectl, tenant, "tunedmodel", "minilm")
    current = model["status"]["currentIteration"]
    assert current["iteration"] == status["iteration"] == 1
    assert current["sourceTask"] == "first"
    assert current["value"] == best["metric"]
    assert any(
        c["type"] == "Ready" and c["status"] == "True" for c in model["status"]["conditions"]
    )

    # The promoted iteration is complete, with its manifest; every trial's scratch is gone.
    promoted = current["uri"]
    iteration_prefix = promoted.rstrip("/").rsplit("/", 1)[0] + "/"
    assert "manifest.json" in _keys(s3, iteration_prefix)
    location = S3Location.parse(iteration_prefix)
    manifest = json.loads(
        s3.get_object(Bucket=location.bucket, Key=location.key("manifest.json"))["Body"].read()
    )
    assert manifest["sourceTask"] == "first" or manifest.get("source_task") == "first"
    assert _keys(s3, status["scratchUri"]) == []
    assert [j.metadata.name for j in batch.list_namespaced_job(tenant).items] == [best["name"]]

    # The operator's Prometheus metrics counted the trials and see the task's phase.
    metrics = operator.metrics()
    assert 'kubetune_tasks{phase="Succeeded"}' in metrics
    started = [
        line for line in metrics.splitlines() if line.startswith("kubetune_trials_started_total")
    ]
    assert started and float(started[0].split()[-1]) >= 3
    assert "kubetune_reconcile_duration_seconds_count" in metrics

    # The task's MLflow experiment holds one run per trial and a summary run with the chart.
    tracking = MlflowClient(devcluster.mlflow_uri)
    runs = tracking.search_runs([status["mlflow"]["experimentId"]])
    names = {r.info.run_name for r in runs}
    assert {t["name"] for t in trials} | {"first-summary"} == names
    summary = next(r for r in runs if r.info.run_name == "first-summary")
    assert [a.path for a in tracking.list_artifacts(summary.info.run_id)] == ["trials.png"]

    # The checkpoint loads with sentence-transformers and reproduces the trial's metric.
    result_max_length = 256
    local = _download(s3, promoted, tmp_path / "promoted")
    measured = _evaluate(local, e2e_data.validation_path, 100, result_max_length)
    assert abs(measured - best["metric"]) < 0.01, (measured, best["metric"])

    # Re-applying the same manifests starts nothing.
    jobs_before = {j.metadata.uid for j in batch.list_namespaced_job(tenant).items}
    out = apply(
        kubectl,
        tenant,
        tuned_model("minilm", e2e_data.base_model, retention=1),
        fine_tuning_task("first", "minilm", e2e_data, [2e-5, 1e-4, 3e-4]),
    )
    assert "unchanged" in out
    assert {j.metadata.uid for j in batch.list_namespaced_job(tenant).items} == jobs_before

    # A second iteration starts from the first one's model and supersedes it.
    apply(kubectl, tenant, fine_tuning_task("second", "minilm", e2e_data, [5e-5, 2e-4]))
    second = wait_phase(kubectl, tenant, "second", {"Succeeded", "Failed"})["status"]
    assert second["phase"] == "Succeeded", second
    assert second["startingModel"] == promoted
    assert second["iteration"] == 2
    model = get(kubectl, tenant, "tunedmodel", "minilm")["status"]
    assert model["currentIteration"]["iteration"] == 2
    assert _keys(s3, iteration_prefix) == []  # retention 1: iteration 1 is gone
    assert [h["iteration"] for h in model.get("history", [])] in ([2], [])
