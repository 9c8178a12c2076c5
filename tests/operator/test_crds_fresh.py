"""The generated CRDs and docs/api.md match the models, and the schemas are structural."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune import crdgen

ROOT = Path(__file__).resolve().parents[2]


def test_generated_files_are_fresh():
    diffs = crdgen.stale(ROOT)
    assert not diffs, "run `python -m kubetune.crdgen`:\n" + "\n".join(diffs)


def _walk(node, path=""):
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}/{i}")


@pytest.mark.parametrize("name", ["tunedmodels", "finetuningtasks"])
def test_crd_is_structural(name):
    document = yaml.safe_load((ROOT / f"crds/{name}.kubetune.dev.yaml").read_text())
    version = document["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if not isinstance(node, dict):
            continue
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert node.get("type") != "null", path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path
    assert crdgen.lint(schema["properties"]["spec"], ".spec") == []
    assert crdgen.lint(schema["properties"]["status"], ".status") == []
    assert version["subresources"] == {"status": {}}
    assert "kubetune" in document["spec"]["names"]["categories"]


def test_task_crd_has_rules_columns_and_selectable_phase():
    document = yaml.safe_load((ROOT / "crds/finetuningtasks.kubetune.dev.yaml").read_text())
    version = document["spec"]["versions"][0]
    assert {"jsonPath": ".status.phase"} in version["selectableFields"]
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert columns["Trials"] == ".status.trialsSummary"
    assert columns["Phase"] == ".status.phase"
    rules = [
        node["message"]
        for _, node in _walk(version["schema"])
        if isinstance(node, dict) and "rule" in node
    ]
    for message in (
        "modelRef is immutable",
        "parallelTrials must not exceed maxTrials",
        "min must be less than max",
        "a log-scale range needs min > 0",
        "restartGeneration can only increase",
    ):
        assert message in rules


def test_generator_rejects_non_structural_unions():
    with pytest.raises(ValueError, match="not structural"):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {}, defaults=False)
