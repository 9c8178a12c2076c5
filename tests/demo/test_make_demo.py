"""`make demo` itself, as the README tells a newcomer to run it (with tiny trials), then
`make demo-down`: the task succeeds, the summary and the promoted model are printed, the
operator acted only as the chart's ServiceAccount, and nothing is left running."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devcluster import audit
from devcluster.state import ClusterInfo

REPO = Path(__file__).resolve().parents[2]
OPERATOR_ACCOUNT = "system:serviceaccount:kubetune-system:kubetune"
"""The release `kubetune`'s ServiceAccount (the chart names it after the release)."""


def _writers(state_dir: Path, verb: str, resource: str, subresource: str = "") -> set[str]:
    """Who made a successful `verb` request on `resource` in the demo's namespace."""
    return {
        event["user"]["username"]
        for event in audit.events(state_dir)
        if event.get("verb") == verb
        and (event.get("objectRef") or {}).get("resource") == resource
        and (event.get("objectRef") or {}).get("subresource", "") == subresource
        and (event.get("objectRef") or {}).get("namespace") == "kubetune-demo"
        and (event.get("responseStatus") or {}).get("code", 500) < 300
    }


@pytest.mark.e2e
def test_make_demo_runs_an_iteration_and_demo_down_cleans_up(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    env = {
        **os.environ,
        "DEVCLUSTER_STATE_DIR": str(state_dir),
        "KUBETUNE_DEMO_MAX_STEPS": "2",
        "KUBETUNE_DEMO_MAX_EVAL_SAMPLES": "100",
    }
    try:
        run = subprocess.run(
            ["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=1500
        )
        output = run.stdout + run.stderr
        assert run.returncode == 0, output[-4000:]
        assert "debian-search-1: Succeeded" in output
        assert "ndcg@10 BEFORE → AFTER" in output
        assert "Promoted: iteration 1, ndcg@10" in output
        assert "s3://kubetune/lineages/kubetune-demo/debian-search/iterations/1/model/" in output
        assert "MLflow UI:" in output
        info = ClusterInfo.load(state_dir)
        assert info is not None and "operator" in info.processes
        # The job controller and node agent update Jobs and pods; only the operator
        # creates Jobs and writes the task's status.
        assert _writers(state_dir, "create", "jobs") == {OPERATOR_ACCOUNT}
        assert _writers(state_dir, "patch", "finetuningtasks", "status") == {OPERATOR_ACCOUNT}

        again = subprocess.run(
            ["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stdout[-3000:]
        assert "unchanged" in again.stdout  # re-applied manifests start nothing
    finally:
        subprocess.run(["make", "demo-down"], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert not state_dir.exists()
