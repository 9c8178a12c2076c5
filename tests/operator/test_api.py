"""The API models accept what users write and read back what the apiserver stores."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kubetune.api import FineTuningTaskSpec, SearchParameter
from kubetune.api import conditions as c
from kubetune.api.finetuningtask import SEARCHABLE_PARAMETERS, ParameterName
from kubetune.contract import Hyperparameters, LoraSpec, LossSpec
from tests.operator.builders import NOW

MODELS = {"hyperparameters": Hyperparameters, "lora": LoraSpec, "loss": LossSpec}


def test_searchable_parameters_exist_in_the_contract():
    assert set(SEARCHABLE_PARAMETERS) == set(ParameterName.__args__)
    for section, field, _ in SEARCHABLE_PARAMETERS.values():
        assert field in MODELS[section].model_fields


def test_camel_case_round_trip_and_aliases():
    spec = FineTuningTaskSpec.model_validate(
        {
            "modelRef": {"name": "m"},
            "dataset": {"train": ["/data/train.jsonl"], "format": "scored"},
            "hyperparameters": {
                "searchSpace": [{"name": "learningRate", "float": {"min": 1e-5, "max": 1e-4}}]
            },
        }
    )
    assert spec.hyperparameters.search_space[0].float_range is not None
    document = spec.to_json()
    assert document["hyperparameters"]["searchSpace"][0]["float"]["min"] == 1e-5
    assert FineTuningTaskSpec.model_validate(document) == spec


@pytest.mark.parametrize(
    "document",
    [
        {"modelRef": {"name": "Bad_Name"}, "dataset": {"train": ["/x"]}},
        {"modelRef": {"name": "m"}, "dataset": {"train": ["http://x/y"]}},
        {"modelRef": {"name": "m"}, "dataset": {"train": []}},
    ],
)
def test_invalid_specs_are_rejected(document):
    with pytest.raises(ValidationError):
        FineTuningTaskSpec.model_validate(document)


def test_unknown_parameter_name_rejected():
    with pytest.raises(ValidationError):
        SearchParameter.model_validate({"name": "momentum", "categorical": {"values": [1]}})


def test_set_condition_moves_transition_time_only_on_flip():
    conditions = []
    assert c.set_condition(conditions, c.RUNNING, "True", "Started", "", 1, NOW)
    later = NOW.replace(hour=13)
    assert not c.set_condition(conditions, c.RUNNING, "True", "Started", "", 1, later)
    assert conditions[0].last_transition_time == NOW
    assert c.set_condition(conditions, c.RUNNING, "False", "Done", "", 2, later)
    assert conditions[0].last_transition_time == later
    assert c.set_condition(conditions, c.FAILED, "True", "X", "", 2, later)
    assert c.task_phase(conditions) == "Failed"
