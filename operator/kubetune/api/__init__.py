"""The kubetune.dev/v1alpha1 API: the one source of the CRDs, the API reference and the
types the operator reads and writes.

Import from here; the submodules are an implementation detail.
"""

from kubetune.api.base import API_VERSION, GROUP, VERSION, ApiModel, Condition, ParamValue
from kubetune.api.conditions import Phase
from kubetune.api.finetuningtask import (
    MAX_WARM_START,
    SEARCHABLE_PARAMETERS,
    EarlyStoppingSpec,
    FineTuningTaskSpec,
    HyperparameterSpec,
    ObjectiveSpec,
    SearchParameter,
    TrainerSpec,
)
from kubetune.api.resources import FINE_TUNING_TASK, RESOURCES, TUNED_MODEL, Resource
from kubetune.api.taskstatus import (
    BestTrial,
    FineTuningTaskStatus,
    MlflowStatus,
    PromotionStatus,
    PromotionStep,
    PrunedAt,
    StepValue,
    SuggestionOrigin,
    TrialCounts,
    TrialPhase,
    TrialStatus,
    WarmStartStatus,
)
from kubetune.api.tunedmodel import (
    CredentialsSecretRef,
    PromotedIteration,
    RankedTrial,
    StorageSpec,
    TunedModelSpec,
    TunedModelStatus,
)

__all__ = [
    "API_VERSION",
    "FINE_TUNING_TASK",
    "GROUP",
    "MAX_WARM_START",
    "RESOURCES",
    "SEARCHABLE_PARAMETERS",
    "TUNED_MODEL",
    "VERSION",
    "ApiModel",
    "BestTrial",
    "Condition",
    "CredentialsSecretRef",
    "EarlyStoppingSpec",
    "FineTuningTaskSpec",
    "FineTuningTaskStatus",
    "HyperparameterSpec",
    "MlflowStatus",
    "ObjectiveSpec",
    "ParamValue",
    "Phase",
    "PromotedIteration",
    "PromotionStatus",
    "PromotionStep",
    "PrunedAt",
    "RankedTrial",
    "Resource",
    "SearchParameter",
    "StepValue",
    "StorageSpec",
    "SuggestionOrigin",
    "TrainerSpec",
    "TrialCounts",
    "TrialPhase",
    "TrialStatus",
    "TunedModelSpec",
    "TunedModelStatus",
    "WarmStartStatus",
]
