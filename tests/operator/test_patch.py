"""Status writes as merge patches: removals become nulls, nothing changed is empty."""

from __future__ import annotations

import pytest

from kubetune.patch import merge_patch


def apply(document: dict, patch: dict) -> dict:
    result = dict(document)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = apply(result[key], value)
        else:
            result[key] = value
    return result


@pytest.mark.parametrize(
    ("old", "new", "patch"),
    [
        ({"a": 1}, {"a": 1}, {}),
        ({"a": 1, "promotion": {"step": "Done"}}, {"a": 2}, {"a": 2, "promotion": None}),
        ({"c": {"x": 1, "y": 2}}, {"c": {"x": 1}}, {"c": {"y": None}}),
        ({"trials": [1, 2]}, {"trials": [1]}, {"trials": [1]}),
        ({}, {"c": {}}, {"c": {}}),
    ],
)
def test_merge_patch(old, new, patch):
    assert merge_patch(old, new) == patch
    assert apply(old, patch) == new
