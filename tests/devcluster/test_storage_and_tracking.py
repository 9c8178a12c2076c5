"""The devcluster's S3 server and MLflow tracking server are real and wired together."""

from __future__ import annotations

import mlflow
from mlflow.tracking import MlflowClient

from devcluster.state import ClusterInfo


def test_s3_put_get_and_server_side_copy(s3, bucket: str) -> None:  # type: ignore[no-untyped-def]
    s3.put_object(Bucket=bucket, Key="a/model.bin", Body=b"\x00weights\xff" * 1000)
    body = s3.get_object(Bucket=bucket, Key="a/model.bin")["Body"].read()
    assert body == b"\x00weights\xff" * 1000
    s3.copy_object(
        Bucket=bucket, Key="b/model.bin", CopySource={"Bucket": bucket, "Key": "a/model.bin"}
    )
    copied = s3.get_object(Bucket=bucket, Key="b/model.bin")["Body"].read()
    assert copied == body
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == ["a/model.bin", "b/model.bin"]


def test_mlflow_run_logs_params_metrics_and_an_artifact_into_s3(
    devcluster: ClusterInfo, s3, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    mlflow.set_tracking_uri(devcluster.mlflow_uri)
    experiment_id = mlflow.create_experiment(f"devcluster-test-{tmp_path.name}")
    artifact = tmp_path / "notes.txt"
    artifact.write_text("trained on devcluster")
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_params({"learning_rate": 5e-5, "batch_size": 32})
        for step, loss in enumerate([1.0, 0.5, 0.25]):
            mlflow.log_metric("loss", loss, step=step)
        mlflow.log_artifact(str(artifact))
    tracked = MlflowClient(devcluster.mlflow_uri).get_run(run.info.run_id)
    assert tracked.data.params == {"learning_rate": "5e-05", "batch_size": "32"}
    assert tracked.data.metrics["loss"] == 0.25
    objects = s3.list_objects_v2(Bucket=devcluster.mlflow_artifacts_bucket).get("Contents", [])
    stored = [
        o["Key"] for o in objects if o["Key"].endswith(f"{run.info.run_id}/artifacts/notes.txt")
    ]
    assert len(stored) == 1
    body = s3.get_object(Bucket=devcluster.mlflow_artifacts_bucket, Key=stored[0])["Body"].read()
    assert body == b"trained on devcluster"
