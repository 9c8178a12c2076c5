"""`python -m kubetune_trainer` for the scale benchmark: the trainer's contract, no training.

It sleeps a random 1-5 s in place of training, then validates the `TrialConfig` as the
real trainer does, uploads a one-file checkpoint and a valid `TrialResult` beside it,
writes the termination summary and exits 0. The metric is a seeded function of the trial,
so searches and promotions see distinct, reproducible values.

Hundreds of these run at once on a small machine, so the process stays light: it sleeps
before importing pydantic, and signs its two S3 PUTs itself (SigV4) instead of importing
boto3, which would cost about 0.5 s of CPU and 30 MB per trial and drown the operator's
own costs in the figures.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote, urlsplit

TRAINER_VERSION = "standin-1"
PUT_ATTEMPTS = 10


def _sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _put(uri: str, body: bytes) -> None:
    """PUT one object with AWS Signature Version 4, path-style, from the standard env vars."""
    endpoint = os.environ["AWS_ENDPOINT_URL_S3"].rstrip("/")
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    access, secret = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
    path = "/" + quote(uri.removeprefix("s3://"), safe="/-_.~")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    scope = f"{stamp[:8]}/{region}/s3/aws4_request"
    payload = hashlib.sha256(body).hexdigest()
    headers = {
        "host": urlsplit(endpoint).netloc,
        "x-amz-content-sha256": payload,
        "x-amz-date": stamp,
    }
    names = ";".join(sorted(headers))
    canonical = "\n".join(
        ["PUT", path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", names, payload]
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    key = f"AWS4{secret}".encode()
    for part in (stamp[:8], region, "s3", "aws4_request"):
        key = _sign(key, part)
    signature = hmac.new(
        key, f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{digest}".encode(), hashlib.sha256
    ).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={names}, "
        f"Signature={signature}"
    )
    request = urllib.request.Request(endpoint + path, data=body, method="PUT", headers=headers)
    for attempt in range(PUT_ATTEMPTS):
        try:
            with urllib.request.urlopen(request, timeout=30):
                return
        except (urllib.error.URLError, TimeoutError):
            if attempt == PUT_ATTEMPTS - 1:
                raise
            time.sleep(1 + attempt)


def main() -> int:
    started = time.monotonic()
    raw = os.environ["KUBETUNE_TRIAL_CONFIG"]
    trial = json.loads(raw)["trial"]
    rng = random.Random(f"{trial['namespace']}/{trial['name']}")
    time.sleep(rng.uniform(1.0, 5.0))

    from kubetune.contract import (
        EXIT_OK,
        TERMINATION_MESSAGE_ENV,
        TrialConfig,
        TrialResult,
        termination_summary,
    )

    config = TrialConfig.model_validate_json(raw)
    checkpoint = config.output.checkpoint_uri.rstrip("/") + "/"
    _put(checkpoint + "config.json", json.dumps({"standin": True}).encode())
    value = 0.5 + rng.uniform(0.0, 0.1)
    result = TrialResult(
        trial=config.trial,
        objective=config.objective,
        value=value,
        baseline_value=0.5,
        metrics={config.objective.metric: value},
        baseline_metrics={config.objective.metric: 0.5},
        parameters={"hyperparameters.learning_rate": config.learning_rate},
        steps=config.hyperparameters.max_steps or 1,
        epochs=1.0,
        train_samples=1,
        eval_queries=1,
        eval_corpus=1,
        samples_per_second=1.0,
        train_seconds=0.0,
        wall_seconds=time.monotonic() - started,
        checkpoint_uri=checkpoint,
        base_model=config.base_model,
        train_data=config.data.train,
        validation_data=config.data.validation,
        eval_max_seq_length=config.hyperparameters.max_seq_length or 256,
        device="cpu",
        trainer_version=TRAINER_VERSION,
    )
    assert config.output.result_uri is not None
    _put(config.output.result_uri, result.model_dump_json().encode())
    summary = termination_summary(result)
    message_path = os.environ.get(TERMINATION_MESSAGE_ENV)
    if message_path:
        Path(message_path).write_text(summary + "\n")
    print(summary, flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
