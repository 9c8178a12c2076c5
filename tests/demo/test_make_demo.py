"""`make demo` itself, as the README tells a newcomer to run it (with tiny trials), then
`make demo-down`: the task succeeds, the summary and the promoted model are printed, and
nothing is left running."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devcluster.state import ClusterInfo

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.e2e
def test_make_demo_runs_an_iteration_and_demo_down_cleans_up(tmp_path: Path) -> None:
    state_dir = tmp_path / "demo"
    env = {**os.environ, "DEVCLUSTER_STATE_DIR": str(state_dir), "KUBETUNE_DEMO_MAX_STEPS": "2"}
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

        again = subprocess.run(
            ["make", "demo"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert again.returncode == 0, again.stdout[-3000:]
        assert "unchanged" in again.stdout  # re-applied manifests start nothing
    finally:
        subprocess.run(["make", "demo-down"], cwd=REPO, env=env, capture_output=True, timeout=120)
    assert not state_dir.exists()
