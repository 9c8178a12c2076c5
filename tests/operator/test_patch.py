"""Status writes as merge patches: removals become nulls, nothing changed is empty."""

from __future__ import annotations

import pytest

from kubetune.patch import merge_patch
from tests.operator.builders import apply_merge_patch


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
    assert apply_merge_patch(old, patch) == new
