"""MLflow: one experiment per FineTuningTask attempt, one run per trial, and a summary run
with the trials' chart.

The operator creates the experiment (so the task's status can link it before any trainer
starts); trainers create and log their own runs with the MLflow client. The operator
speaks MLflow's REST API directly: the `mlflow` package would add about 165 MB (pandas,
numpy, scipy) to a process that makes a handful of calls per task. Artifacts go through
the tracking server's artifact proxy (`mlflow-artifacts:` URIs, MLflow's default);
a server that hands out direct store URIs instead gets no chart (the rest still works).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 30
PROXIED_ARTIFACTS = "mlflow-artifacts"


class TrackingError(RuntimeError):
    """The tracking server could not be reached or refused a request."""


class _ApiError(TrackingError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def _tags(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": k, "value": v} for k, v in tags.items()]


class Tracking:
    def __init__(self, tracking_uri: str) -> None:
        self.uri = tracking_uri.rstrip("/")

    def _request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> dict[str, Any]:
        request = urllib.request.Request(f"{self.uri}{path}", data=body, method=method)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                parsed = json.loads(detail)
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                parsed = {}
            code = str(parsed.get("error_code") or error.code)
            raise _ApiError(code, str(parsed.get("message") or detail[:500])) from error
        except (urllib.error.URLError, OSError) as error:
            raise TrackingError(f"{self.uri} is not reachable: {error}") from error
        return dict(json.loads(payload)) if payload.strip() else {}

    def _get(self, endpoint: str, **query: str) -> dict[str, Any]:
        return self._request("GET", f"/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(query)}")

    def _post(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        return self._request("POST", f"/api/2.0/mlflow/{endpoint}", data, "application/json")

    def _experiment_by_name(self, name: str) -> str | None:
        try:
            found = self._get("experiments/get-by-name", experiment_name=name)
        except _ApiError as error:
            if error.code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return str(found["experiment"]["experiment_id"])

    def ensure_experiment(self, name: str, tags: dict[str, str]) -> str:
        try:
            existing = self._experiment_by_name(name)
            if existing is not None:
                return existing
            return str(self._post("experiments/create", {"name": name, "tags": _tags(tags)})
                       ["experiment_id"])  # fmt: skip
        except _ApiError as error:
            # A concurrent create of the same name: read what won.
            existing = self._experiment_by_name(name)
            if existing is not None:
                return existing
            raise TrackingError(f"experiment {name!r}: {error}") from error

    def _ensure_run(self, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """The run named `run_name` in the experiment, created if it does not exist yet."""
        found = self._post(
            "runs/search",
            {
                "experiment_ids": [experiment_id],
                "filter": f"attributes.run_name = '{run_name}'",
                "max_results": 1,
            },
        ).get("runs", [])
        if found:
            return str(found[0]["info"]["run_id"])
        run = self._post(
            "runs/create",
            {
                "experiment_id": experiment_id,
                "run_name": run_name,
                "start_time": int(time.time() * 1000),
                "tags": _tags(tags),
            },
        )
        return str(run["run"]["info"]["run_id"])

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        points: list[tuple[int, float]] = []
        page: dict[str, str] = {}
        try:
            while True:
                answer = self._get("metrics/get-history", run_id=run_id, metric_key=key, **page)
                points += [(int(m.get("step", 0)), float(m["value"]))
                           for m in answer.get("metrics", [])]  # fmt: skip
                token = answer.get("next_page_token")
                if not token:
                    return points
                page = {"page_token": token}
        except _ApiError as error:
            raise TrackingError(f"history of {key} in run {run_id}: {error}") from error

    def log_summary(
        self, experiment_id: str, run_name: str, tags: dict[str, str], files: dict[str, bytes]
    ) -> str:
        """Write `files` as artifacts of the experiment's summary run (created once)."""
        try:
            run_id = self._ensure_run(experiment_id, run_name, tags)
            info = self._get("runs/get", run_id=run_id)["run"]["info"]
            artifact_uri = str(info.get("artifact_uri", ""))
            location = urllib.parse.urlparse(artifact_uri)
            if location.scheme != PROXIED_ARTIFACTS:
                raise TrackingError(
                    f"run {run_id} stores artifacts at {artifact_uri!r}, which the operator "
                    "cannot write; serve artifacts through the tracking server "
                    "(mlflow server --serve-artifacts, MLflow's default)"
                )
            folder = location.path.strip("/")
            for name, content in files.items():
                path = urllib.parse.quote(f"{folder}/{name}")
                self._request("PUT", f"/api/2.0/mlflow-artifacts/artifacts/{path}", content,
                              "application/octet-stream")  # fmt: skip
            if info.get("status") not in ("FINISHED", "FAILED", "KILLED"):
                self._post("runs/update", {"run_id": run_id, "status": "FINISHED",
                                           "end_time": int(time.time() * 1000)})  # fmt: skip
        except _ApiError as error:
            raise TrackingError(f"summary of experiment {experiment_id}: {error}") from error
        return run_id

    def experiment_url(self, experiment_id: str) -> str:
        return f"{self.uri}/#/experiments/{experiment_id}"
