"""JSON merge patches (RFC 7386) between two versions of a status.

Models serialise without nulls, so a field the decision cleared (e.g. `promotion` after a
restart) is simply absent from the new document; a merge patch must say `null` to remove
it. Handlers patch `status` with `merge_patch(old.to_json(), new.to_json())`, and skip the
write when it is empty.
"""

from __future__ import annotations

from typing import Any


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The smallest merge patch that turns `old` into `new` (lists are replaced whole)."""
    patch: dict[str, Any] = {key: None for key in old if key not in new}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, dict) and isinstance(before, dict):
            nested = merge_patch(before, value)
            if nested:
                patch[key] = nested
        elif value != before or key not in old:
            patch[key] = value
    return patch
