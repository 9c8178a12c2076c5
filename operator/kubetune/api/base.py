"""Building blocks shared by the kubetune.dev resource types.

Every type in `kubetune.api` derives from `ApiModel`: snake_case in Python, camelCase in
JSON, exactly as the apiserver stores it. The annotated string and number types here carry
the limits the CRD schemas need (a `maxLength` on every string and a `maxItems` on every
list keep CEL cost estimates bounded), so `kubetune.crdgen` can emit them unchanged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
URI_PATTERN = r"^(s3://[a-z0-9][a-z0-9.-]*[a-z0-9]/\S*|/\S*)$"
"""What the trainer can read: an `s3://bucket/key` URI or an absolute path in its image."""

DnsLabel = Annotated[str, Field(min_length=1, max_length=63, pattern=DNS_LABEL_PATTERN)]
DnsSubdomain = Annotated[str, Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
SecretKey = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
Uri = Annotated[str, Field(min_length=2, max_length=1024, pattern=URI_PATTERN)]
ShortText = Annotated[str, Field(max_length=256)]
Message = Annotated[str, Field(max_length=4096)]


def _scalar(value: Any) -> Any:
    """Reject objects, lists and nulls with one message; without this, pydantic reports
    the first member of the union (`...values.0.bool: Input should be a valid boolean`)."""
    if not isinstance(value, bool | int | float | str):
        raise ValueError(f"must be a number, string or boolean, not {type(value).__name__}")
    return value


ParamValue = Annotated[
    bool | int | float | str,
    BeforeValidator(_scalar),
    WithJsonSchema(
        {
            "x-kubernetes-preserve-unknown-fields": True,
            "description": "A number, string or boolean.",
        }
    ),
]
"""One hyperparameter value. The CRD cannot express "scalar of any type" structurally, so it
keeps the value as written and the operator validates it against the trainer contract."""

ParamMap = Annotated[dict[ShortText, ParamValue], Field(max_length=32)]


class ApiModel(BaseModel):
    """Base of every API type: camelCase JSON, snake_case Python, unknown keys ignored
    (the apiserver prunes them anyway, and older operators must read newer objects)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="ignore",
    )

    def to_json(self) -> dict[str, Any]:
        """The object as the apiserver stores it: camelCase keys, no null values."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Condition(ApiModel):
    """A `metav1.Condition`: one aspect of the object's state, for tools and for people."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of condition in CamelCase, e.g. `Running` or `Ready`.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="`True`, `False` or `Unknown`.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="Human-readable details of the transition."
    )
    last_transition_time: datetime = Field(
        description="When the condition last changed from one status to another."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The `.metadata.generation` the condition was set for.",
    )


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    ),
]
