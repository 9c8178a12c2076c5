"""S3-compatible storage for promotion: server-side copies, listings, manifests, deletes.

Promotion copies a trial's checkpoint to its iteration's place without moving bytes
through the operator (CopyObject), verifies the copy object by object, and deletes what
an iteration supersedes. Every call is idempotent so a crashed promotion can be redone.
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


class StorageError(RuntimeError):
    """Storage could not be reached or answered with an error; the message says which."""


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri!r}")
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {uri!r}")
        return cls(bucket, prefix.strip("/"))

    def key(self, relative: str) -> str:
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def child(self, relative: str) -> S3Location:
        return S3Location(self.bucket, self.key(relative.strip("/")))

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class S3Credentials:
    endpoint: str | None
    access_key: str | None
    secret_key: str | None
    region: str = "us-east-1"


class Storage:
    _session = boto3.session.Session()
    _creating = threading.Lock()
    """boto3 sessions are not thread-safe: clients are created one at a time."""

    @classmethod
    @functools.lru_cache(maxsize=64)
    def for_credentials(cls, credentials: S3Credentials) -> Storage:
        """One client per set of credentials: building a boto3 client costs tens of
        milliseconds of CPU and megabytes, and clients are safe to share across threads.
        A rotated key is a new set, so it gets a new client."""
        return cls(credentials)

    @classmethod
    def warm_up(cls) -> None:
        """Load the S3 service model into the shared session (a few hundred milliseconds
        of CPU, more on a busy machine), so the first task's client is built quickly."""
        cls(S3Credentials(endpoint=None, access_key="warm-up", secret_key="warm-up"))

    def __init__(self, credentials: S3Credentials) -> None:
        with self._creating:
            self._client = self._session.client(
                "s3",
                endpoint_url=credentials.endpoint,
                aws_access_key_id=credentials.access_key,
                aws_secret_access_key=credentials.secret_key,
                region_name=credentials.region,
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                ),
            )

    def _call(self, what: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            raise StorageError(f"{what}: {code or error}") from error
        except BotoCoreError as error:
            raise StorageError(f"{what}: {error}") from error

    def check_bucket(self, bucket: str) -> None:
        self._call(f"bucket {bucket!r} is not reachable", "head_bucket", Bucket=bucket)

    def list(self, location: S3Location) -> dict[str, int]:
        """Relative key -> size of every object under the location's prefix."""
        prefix = f"{location.prefix}/" if location.prefix else ""
        found: dict[str, int] = {}
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": location.bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"listing {location.uri}", "list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                found[item["Key"][len(prefix) :]] = int(item["Size"])
            if not page.get("IsTruncated"):
                return found
            token = page["NextContinuationToken"]

    def copy_tree(
        self, source: S3Location, target: S3Location, skip: frozenset[str] = frozenset()
    ) -> dict[str, int]:
        """Server-side copy of every object; objects already copied (same size) are kept."""
        objects = {k: v for k, v in self.list(source).items() if k not in skip}
        if not objects:
            raise StorageError(f"nothing to copy: {source.uri} is empty")
        present = self.list(target)
        for relative, size in objects.items():
            if present.get(relative) == size:
                continue
            self._call(
                f"copying {source.uri}/{relative}",
                "copy_object",
                Bucket=target.bucket,
                Key=target.key(relative),
                CopySource={"Bucket": source.bucket, "Key": source.key(relative)},
            )
        return objects

    def delete_tree(self, location: S3Location) -> int:
        keys = [location.key(k) for k in self.list(location)]
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call(
                f"deleting under {location.uri}",
                "delete_objects",
                Bucket=location.bucket,
                Delete={"Objects": batch, "Quiet": True},
            )
        return len(keys)

    def put_json(self, location: S3Location, relative: str, document: Any) -> None:
        body = json.dumps(document, indent=2, sort_keys=True).encode()
        self._call(
            f"writing {location.uri}/{relative}",
            "put_object",
            Bucket=location.bucket,
            Key=location.key(relative),
            Body=body,
            ContentType="application/json",
        )

    def get_json(self, location: S3Location, relative: str) -> Any | None:
        try:
            response = self._client.get_object(Bucket=location.bucket, Key=location.key(relative))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise StorageError(f"reading {location.uri}/{relative}: {error}") from error
        except BotoCoreError as error:
            raise StorageError(f"reading {location.uri}/{relative}: {error}") from error
        return json.loads(response["Body"].read())
