"""Local paths and `s3://` URIs behind one small interface, for everything the trainer reads
and writes: the base model directory, data files, the checkpoint, result and progress JSON,
and resumable state.

S3 goes through boto3, configured only by the standard environment (`AWS_ENDPOINT_URL[_S3]`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), so no secret is ever in
the trial config. A missing input raises `InputError` (the user named something that is not
there); any other S3 or file-system failure raises `StorageError`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import InputError, StorageError

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/key` -> (`bucket`, `some/key`)."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def join_uri(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def _inside(directory: Path, relative: str, uri: str) -> Path:
    """`directory / relative`, refusing an S3 key whose `..` parts would make a download
    write outside the directory (S3 keys are plain strings, `..` included)."""
    target = (directory / relative).resolve()
    if not target.is_relative_to(directory.resolve()):
        raise InputError(f"{uri}: the key leaves the download directory ('..' in the key)")
    return target


class Storage:
    """Reads and writes local paths and s3:// URIs. One instance per trial process."""

    @cached_property
    def _s3(self) -> Any:
        import boto3
        from botocore.config import Config

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"} if endpoint else {},
        )
        return boto3.client("s3", config=config)

    def _s3_call(self, what: str, uri: str, call: Any, *args: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return call(*args, **kwargs)
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in _MISSING_CODES:
                raise InputError(f"{uri}: not found") from None
            raise StorageError(f"cannot {what} {uri}: {error}") from None
        except BotoCoreError as error:
            raise StorageError(f"cannot {what} {uri}: {error}") from None

    def _s3_keys(self, uri: str) -> Iterator[str]:
        bucket, prefix = split_s3(uri)
        paginator = self._s3.get_paginator("list_objects_v2")
        pages = self._s3_call(
            "list", uri, lambda: list(paginator.paginate(Bucket=bucket, Prefix=prefix))
        )
        for page in pages:
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):
                    yield item["Key"]

    def list_files(self, uri: str) -> list[str]:
        """The files a data URI stands for: itself, or every file below a directory/prefix
        (a URI ending in `/`, or a local directory), sorted."""
        if is_s3(uri):
            if not uri.endswith("/"):
                return [uri]
            bucket, _ = split_s3(uri)
            files = sorted(f"s3://{bucket}/{key}" for key in self._s3_keys(uri))
        else:
            path = Path(uri)
            if not path.exists():
                raise InputError(f"{uri}: not found")
            if not path.is_dir():
                return [uri]
            files = sorted(str(p) for p in path.rglob("*") if p.is_file())
        if not files:
            raise InputError(f"{uri}: no files in this directory")
        return files

    def local_file(self, uri: str, cache_dir: Path) -> Path:
        """A local path to read `uri` from: the path itself, or an S3 download in `cache_dir`."""
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_file():
                raise InputError(f"{uri}: not found")
            return path
        bucket, key = split_s3(uri)
        target = _inside(cache_dir, f"{bucket}/{key}", uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._s3_call("download", uri, self._s3.download_file, bucket, key, str(target))
        return target

    def local_dir(self, uri: str, cache_dir: Path) -> Path:
        """A local directory with the contents of `uri`: the path itself, or an S3 prefix
        downloaded into `cache_dir`."""
        if not is_s3(uri):
            path = Path(uri)
            if not path.is_dir():
                raise InputError(f"{uri}: not a directory")
            return path
        prefix_uri = uri if uri.endswith("/") else uri + "/"
        bucket, prefix = split_s3(prefix_uri)
        keys = list(self._s3_keys(prefix_uri))
        if not keys:
            raise InputError(f"{uri}: no objects under this prefix")
        for key in keys:
            target = _inside(cache_dir, key[len(prefix) :], f"s3://{bucket}/{key}")
            target.parent.mkdir(parents=True, exist_ok=True)
            self._s3_call(
                "download", f"s3://{bucket}/{key}", self._s3.download_file, bucket, key, str(target)
            )
        return cache_dir

    def upload_file(self, source: Path, uri: str) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3_call("upload to", uri, self._s3.upload_file, str(source), bucket, key)
            return
        try:
            target = Path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            temporary = target.with_name(f".{target.name}.tmp")
            shutil.copyfile(source, temporary)
            os.replace(temporary, target)
        except OSError as error:
            raise StorageError(f"cannot write {uri}: {error}") from None

    def upload_dir(self, source: Path, uri: str) -> None:
        """Copy every file below `source` to the directory or prefix `uri`."""
        for path in sorted(p for p in source.rglob("*") if p.is_file()):
            self.upload_file(path, join_uri(uri, path.relative_to(source).as_posix()))

    def put_bytes(self, uri: str, data: bytes) -> None:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3_call("write", uri, self._s3.put_object, Bucket=bucket, Key=key, Body=data)
            return
        try:
            target = Path(uri)
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as handle:
                handle.write(data)
            os.replace(handle.name, target)
        except OSError as error:
            raise StorageError(f"cannot write {uri}: {error}") from None

    def put_json(self, uri: str, document: Any) -> None:
        self.put_bytes(uri, json.dumps(document, indent=2, sort_keys=True).encode("utf-8"))

    def delete(self, uri: str) -> None:
        """Remove one file or object; absent is fine."""
        if is_s3(uri):
            bucket, key = split_s3(uri)
            self._s3_call("delete", uri, self._s3.delete_object, Bucket=bucket, Key=key)
            return
        try:
            Path(uri).unlink(missing_ok=True)
        except OSError as error:
            raise StorageError(f"cannot delete {uri}: {error}") from None

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return Path(uri).exists()
        bucket, key = split_s3(uri)
        try:
            self._s3_call("read", uri, self._s3.head_object, Bucket=bucket, Key=key)
        except InputError:
            return False
        return True
