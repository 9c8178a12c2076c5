"""The two kubetune.dev resources as the apiserver serves them: names, schema roots, printer
columns and selectable fields. `kubetune.crdgen` turns each `Resource` into a CRD; the
operator uses the names to address the API.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from kubetune.api.finetuningtask import FineTuningTaskSpec
from kubetune.api.taskstatus import FineTuningTaskStatus
from kubetune.api.tunedmodel import TunedModelSpec, TunedModelStatus

NAME_RULE = {
    "rule": "self.metadata.name.size() <= 63",
    # The message names the field: the error's path is `<nil>`, as the schema has no
    # `metadata` a `fieldPath` could point at.
    "message": "metadata.name must be at most 63 characters: it is used as a label value",
}


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    type: str
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class Resource:
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel]
    printer_columns: tuple[PrinterColumn, ...]
    selectable_fields: tuple[str, ...] = ()
    categories: tuple[str, ...] = ("kubetune",)


AGE = PrinterColumn("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

TUNED_MODEL = Resource(
    kind="TunedModel",
    plural="tunedmodels",
    singular="tunedmodel",
    short_names=("tm",),
    description="A named, long-lived model lineage: its base model, where its promoted "
    "iterations are stored, and which one is current.",
    spec=TunedModelSpec,
    status=TunedModelStatus,
    printer_columns=(
        PrinterColumn(
            "Iteration", "integer", ".status.currentIteration.iteration", "Current iteration."
        ),
        PrinterColumn("Metric", "string", ".status.currentIteration.metric", "Objective metric."),
        PrinterColumn("Value", "number", ".status.currentIteration.value", "Its value."),
        PrinterColumn("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', "Ready."),
        PrinterColumn("URI", "string", ".status.currentIteration.uri", "Current model."),
        AGE,
    ),
)

FINE_TUNING_TASK = Resource(
    kind="FineTuningTask",
    plural="finetuningtasks",
    singular="finetuningtask",
    short_names=("ftt",),
    description="One tuning iteration of a TunedModel: one training Job per hyperparameter "
    "set, the best checkpoint promoted to the lineage.",
    spec=FineTuningTaskSpec,
    status=FineTuningTaskStatus,
    printer_columns=(
        PrinterColumn("Phase", "string", ".status.phase", "Lifecycle phase."),
        PrinterColumn("Model", "string", ".spec.modelRef.name", "The TunedModel."),
        PrinterColumn("Iteration", "integer", ".status.iteration", "Lineage iteration.", 1),
        PrinterColumn("Trials", "string", ".status.trialsSummary", "Trials done/total."),
        PrinterColumn("Best", "number", ".status.bestTrial.value", "Best objective value."),
        PrinterColumn("Promoted", "string", ".status.promotedUri", "Promoted model.", 1),
        AGE,
    ),
    selectable_fields=(".status.phase", ".spec.modelRef.name"),
)

RESOURCES: tuple[Resource, ...] = (TUNED_MODEL, FINE_TUNING_TASK)
