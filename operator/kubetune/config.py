"""Operator-wide settings, read once from the environment (the Helm chart sets them).

Everything a TunedModel or FineTuningTask may leave out comes from here: the default
storage (bucket, prefix, endpoint, credentials Secret), the trainer image and the MLflow
tracking URI.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from kubetune.api import CredentialsSecretRef, StorageSpec
from kubetune.decide import Defaults

DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"


@dataclass(frozen=True)
class OperatorConfig:
    defaults: Defaults
    namespaces: tuple[str, ...] = ()
    """Namespaces to watch; empty means the whole cluster."""
    resync_seconds: float = 30.0
    metrics_port: int | None = None
    operator_namespace: str | None = None
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
        port = env.get("KUBETUNE_METRICS_PORT")
        return cls(
            defaults=Defaults(
                storage=storage,
                trainer_image=env.get("KUBETUNE_TRAINER_IMAGE") or DEFAULT_TRAINER_IMAGE,
                mlflow_tracking_uri=env.get("KUBETUNE_MLFLOW_TRACKING_URI") or None,
                trainer_image_pull_policy=env.get("KUBETUNE_TRAINER_IMAGE_PULL_POLICY") or None,
                trainer_service_account=env.get("KUBETUNE_TRAINER_SERVICE_ACCOUNT") or None,
            ),
            namespaces=namespaces,
            resync_seconds=float(env.get("KUBETUNE_RESYNC_SECONDS", "30")),
            metrics_port=int(port) if port else None,
            operator_namespace=env.get("KUBETUNE_OPERATOR_NAMESPACE") or None,
            env=env,
        )
