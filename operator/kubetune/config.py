"""Operator-wide settings, read once from the environment (the Helm chart sets them).

Everything a TunedModel or FineTuningTask may leave out comes from here: the default
storage (bucket, prefix, endpoint, credentials Secret), the trainer image and the MLflow
tracking URI.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from kubetune.api import CredentialsSecretRef, StorageSpec
from kubetune.contract import LOG_FORMAT_ENV
from kubetune.decide import Defaults

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"


TRUE = ("1", "true", "yes", "on")


Number = TypeVar("Number", int, float)


def env_number(
    env: Mapping[str, str],
    name: str,
    kind: type[Number],
    default: Number,
    low: Number,
    high: Number | None = None,
) -> Number:
    """The variable as a number within [low, high], or a ValueError that names it."""
    text = env.get(name) or str(default)
    try:
        value = kind(text)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise ValueError(f"{name} must be {what}, got {text!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
        raise ValueError(f"{name} must be {bounds}, got {text!r}")
    return value


@dataclass(frozen=True)
class LeaderElection:
    """Replicas share one Lease; only its holder reconciles. The timings are Kubernetes'
    own components' defaults: a dead leader is replaced within about 15 s, and a leader
    that cannot renew for 10 s stops before another may take over."""

    namespace: str
    lease_name: str
    identity: str
    lease_duration_seconds: int = 15
    renew_deadline_seconds: float = 10.0
    retry_period_seconds: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str], namespace: str | None) -> LeaderElection | None:
        if env.get("KUBETUNE_LEADER_ELECTION", "").lower() not in TRUE:
            return None
        if not namespace:
            raise ValueError(
                "KUBETUNE_LEADER_ELECTION needs KUBETUNE_OPERATOR_NAMESPACE, the namespace of "
                "the Lease (the chart sets it to the release's namespace)"
            )
        pod = env.get("KUBETUNE_POD_NAME") or socket.gethostname()
        duration = env_number(env, "KUBETUNE_LEASE_DURATION_SECONDS", int, 15, 1)
        renew_name = "KUBETUNE_LEASE_RENEW_DEADLINE_SECONDS"
        renew = env_number(env, renew_name, float, duration * 2 / 3, 0.0)
        retry = env_number(env, "KUBETUNE_LEASE_RETRY_SECONDS", float, renew / 5, 0.0)
        if not 0 < renew < duration:
            raise ValueError("the renew deadline must be positive and shorter than the lease")
        return cls(
            namespace=namespace,
            lease_name=env.get("KUBETUNE_LEASE_NAME") or "kubetune-operator",
            # A restarted process must not mistake its predecessor's Lease for its own.
            identity=f"{pod}_{uuid.uuid4().hex[:8]}",
            lease_duration_seconds=duration,
            renew_deadline_seconds=renew,
            retry_period_seconds=retry,
        )


@dataclass(frozen=True)
class OperatorConfig:
    defaults: Defaults
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""
    resync_seconds: float = 30.0
    workers: int = 16
    """Reconciles that may run at once (threads; each mostly waits on the network)."""
    metrics_port: int | None = None
    operator_namespace: str | None = None
    leader_election: LeaderElection | None = None
    env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = dict(os.environ if env is None else env)
        secret = env.get("KUBETUNE_S3_CREDENTIALS_SECRET")
        storage = StorageSpec(
            bucket=env.get("KUBETUNE_S3_BUCKET") or None,
            prefix=env.get("KUBETUNE_S3_PREFIX") or None,
            endpoint=env.get("KUBETUNE_S3_ENDPOINT") or None,
            region=env.get("KUBETUNE_S3_REGION") or None,
            credentials_secret=CredentialsSecretRef(name=secret) if secret else None,
        )
        namespaces = tuple(n for n in env.get("KUBETUNE_NAMESPACES", "").split(",") if n)
        operator_namespace = env.get("KUBETUNE_OPERATOR_NAMESPACE") or None
        return cls(
            defaults=Defaults(
                storage=storage,
                trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
                mlflow_tracking_uri=env.get("KUBETUNE_MLFLOW_TRACKING_URI") or None,
                trainer_image_pull_policy=env.get("KUBETUNE_TRAINER_IMAGE_PULL_POLICY") or None,
                trainer_service_account=env.get("KUBETUNE_TRAINER_SERVICE_ACCOUNT") or None,
                log_format=env.get(LOG_FORMAT_ENV) or "text",
            ),
            namespaces=namespaces,
            resync_seconds=env_number(env, "KUBETUNE_RESYNC_SECONDS", float, 30.0, 1.0),
            workers=env_number(env, "KUBETUNE_WORKERS", int, 16, 1),
            metrics_port=env_number(env, "KUBETUNE_METRICS_PORT", int, 0, 0, 65535) or None,
            operator_namespace=operator_namespace,
            leader_election=LeaderElection.from_env(env, operator_namespace),
            env=env,
        )
