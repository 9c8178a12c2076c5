"""Translate a FineTuningTask spec and one trial into the trainer's `TrialConfig`.

The CRD speaks camelCase and leaves defaults to the trainer; the contract speaks
snake_case. Only what the user set is passed on, so the contract's defaults stay the one
source of defaults. Building the config is also the operator's final validation of the
searched values (the CRD cannot type categorical values).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from kubetune.api import SEARCHABLE_PARAMETERS, FineTuningTaskSpec, ParamValue
from kubetune.api.finetuningtask import (
    FixedHyperparameters,
    LoraSettings,
    ParameterKind,
)
from kubetune.api.finetuningtask import LossSpec as ApiLossSpec
from kubetune.contract import (
    PROGRESS_FILENAME,
    Hyperparameters,
    LoraSpec,
    LossSpec,
    TrialConfig,
    sibling_uri,
)

_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "hyperparameters": Hyperparameters,
    "lora": LoraSpec,
    "loss": LossSpec,
}
_API_SECTION_MODELS: dict[str, type[BaseModel]] = {
    "hyperparameters": FixedHyperparameters,
    "lora": LoraSettings,
    "loss": ApiLossSpec,
}


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
    baseline_uri: str | None = None,
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
            "baseline_uri": baseline_uri,
        },
        "mlflow": {
            "experiment": experiment,
            "run_name": name,
            "tags": {"kubetune.dev/task": task, "kubetune.dev/model": model},
        },
        **_sections(spec, parameters),
    }
    return TrialConfig.model_validate(document)


def _value_problem(name: str, kind: ParameterKind, value: Any) -> str | None:
    """Why `value` cannot be a value of the parameter, or None. The limits are the API's
    (those a fixed value meets, e.g. `learningRate <= 1`) and then the trainer's; types
    are strict, so `true` is not taken for a learning rate of 1 nor "32" for a batch."""
    expected = {"float": (int, float), "int": (int,), "str": (str,)}[kind]
    if isinstance(value, bool) or not isinstance(value, expected):
        wanted = {"float": "a number", "int": "an integer", "str": "a string"}[kind]
        return f"{value!r}: must be {wanted}"
    section, field, _ = SEARCHABLE_PARAMETERS[name]  # type: ignore[index]
    for models in (_API_SECTION_MODELS, _SECTION_MODELS):
        try:
            models[section].model_validate({field: value})
        except ValidationError as error:
            return f"{value!r}: {error.errors(include_url=False)[0]['msg']}"
    return None


def search_space_problems(spec: FineTuningTaskSpec) -> list[str]:
    """Searched values the trainer or the API's own limits would reject, e.g.
    `batchSize: ["large"]` or a learning-rate range up to 50. A range is checked at both
    bounds (every limit is an interval), so no sample drawn later can be out of bounds."""
    problems = []
    for parameter in spec.hyperparameters.search_space:
        kind = SEARCHABLE_PARAMETERS[parameter.name][2]
        values: list[ParamValue]
        if parameter.categorical is not None:
            values = list(parameter.categorical.values)
        elif parameter.float_range is not None:
            values = [parameter.float_range.min, parameter.float_range.max]
        elif parameter.int_range is not None:
            values = [parameter.int_range.min, parameter.int_range.max]
        else:
            continue
        for value in values:
            problem = _value_problem(parameter.name, kind, value)
            if problem is not None:
                problems.append(f"searchSpace {parameter.name}: {problem}")
    return problems
