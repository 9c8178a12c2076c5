"""Translate a FineTuningTask spec and one trial into the trainer's `TrialConfig`.

The CRD speaks camelCase and leaves defaults to the trainer; the contract speaks
snake_case. Only what the user set is passed on, so the contract's defaults stay the one
source of defaults. Building the config is also the operator's final validation of the
searched values (the CRD cannot type categorical values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from kubetune.api import SEARCHABLE_PARAMETERS, FineTuningTaskSpec, ParamValue
from kubetune.contract import (
    PROGRESS_FILENAME,
    Hyperparameters,
    LoraSpec,
    LossSpec,
    TrialConfig,
    sibling_uri,
)

_SECTION_MODELS = {"hyperparameters": Hyperparameters, "lora": LoraSpec, "loss": LossSpec}


def _snake(model: Any) -> dict[str, Any]:
    return {} if model is None else model.model_dump(exclude_none=True)


def _sections(spec: FineTuningTaskSpec, parameters: Mapping[str, ParamValue]) -> dict[str, Any]:
    sections: dict[str, dict[str, Any]] = {
        "hyperparameters": _snake(spec.hyperparameters.fixed),
        "lora": _snake(spec.method.lora),
        "loss": _snake(spec.loss),
    }
    if spec.hyperparameters.seed is not None:
        sections["hyperparameters"]["seed"] = spec.hyperparameters.seed
    for name, value in parameters.items():
        section, field, _ = SEARCHABLE_PARAMETERS[name]  # type: ignore[index]
        sections[section][field] = value
    return sections


def build_trial_config(
    *,
    spec: FineTuningTaskSpec,
    namespace: str,
    task: str,
    model: str,
    iteration: int,
    index: int,
    name: str,
    parameters: Mapping[str, ParamValue],
    starting_model: str,
    checkpoint_uri: str,
    experiment: str | None,
) -> TrialConfig:
    """The trial's config; raises `pydantic.ValidationError` when the spec and parameters
    do not make a valid one (the task then fails with reason InvalidSpec)."""
    document: dict[str, Any] = {
        "trial": {
            "namespace": namespace,
            "task": task,
            "lineage": model,
            "iteration": iteration,
            "index": index,
            "name": name,
        },
        "base_model": starting_model,
        "data": _snake(spec.dataset),
        "method": spec.method.type,
        "gradient_cache": _snake(spec.gradient_cache),
        "objective": {"metric": spec.objective.metric, "direction": spec.objective.direction},
        "output": {
            "checkpoint_uri": checkpoint_uri,
            "progress_uri": sibling_uri(checkpoint_uri, PROGRESS_FILENAME),
        },
        "mlflow": {
            "experiment": experiment,
            "run_name": name,
            "tags": {"kubetune.dev/task": task, "kubetune.dev/model": model},
        },
        **_sections(spec, parameters),
    }
    return TrialConfig.model_validate(document)


def search_space_problems(spec: FineTuningTaskSpec) -> list[str]:
    """Categorical values the trainer would reject, e.g. `batchSize: ["large"]`."""
    problems = []
    for parameter in spec.hyperparameters.search_space:
        if parameter.categorical is None:
            continue
        section, field, _ = SEARCHABLE_PARAMETERS[parameter.name]
        for value in parameter.categorical.values:
            try:
                _SECTION_MODELS[section].model_validate({field: value})
            except ValidationError as error:
                first = error.errors(include_url=False)[0]["msg"]
                problems.append(f"searchSpace {parameter.name}: {value!r}: {first}")
    return problems
