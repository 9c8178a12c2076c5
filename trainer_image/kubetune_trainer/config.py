"""Reading and validating the trial config the operator hands the trainer.

The config arrives as JSON in `KUBETUNE_TRIAL_CONFIG` or in a file named by `--config`;
either way it is validated against `kubetune.contract.TrialConfig`, and anything wrong becomes
one `InputError` whose message names each offending field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from kubetune.contract import TRIAL_CONFIG_ENV, TrialConfig
from kubetune_trainer.errors import InputError


def describe_validation_error(error: ValidationError) -> str:
    """`field.path: problem (got value)` for each error, joined into one line."""
    parts = []
    for item in error.errors(include_url=False):
        location = ".".join(str(part) for part in item["loc"]) or "config"
        problem = item["msg"]
        if item["type"] not in ("missing", "value_error") and "input" in item:
            problem += f" (got {item['input']!r})"
        parts.append(f"{location}: {problem}")
    return "; ".join(parts)


def parse_config(text: str, source: str) -> TrialConfig:
    """Validate the JSON text of a trial config; `source` names it in error messages."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"invalid trial config in {source}: not JSON: {error}") from None
    try:
        return TrialConfig.model_validate(document)
    except ValidationError as error:
        raise InputError(
            f"invalid trial config in {source}: {describe_validation_error(error)}"
        ) from None


def load_config(path: Path | None, environ: Mapping[str, str] = os.environ) -> TrialConfig:
    """The config from `path` if given, else from the env var `KUBETUNE_TRIAL_CONFIG`."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as error:
            raise InputError(f"cannot read trial config {path}: {error.strerror}") from None
        return parse_config(text, str(path))
    text = environ.get(TRIAL_CONFIG_ENV)
    if not text:
        raise InputError(f"no trial config: set {TRIAL_CONFIG_ENV} or pass --config PATH")
    return parse_config(text, TRIAL_CONFIG_ENV)
