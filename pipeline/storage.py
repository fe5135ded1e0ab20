"""Storage: where outputs, sidecars and job records go.

One small interface, two backends: ``S3Storage`` (any S3-compatible endpoint through boto3,
``S3_ENDPOINT_URL`` for MinIO, R2 and the like) and ``LocalStorage`` (a directory, for the
embedded default). Keys are always ``/``-separated and relative to the output root.

``append_text`` adds lines to a shared record (a job's ``review.jsonl``, ``published.jsonl``)
so that two writers on two machines never lose each other's lines: S3 has no append, so the
S3 backend writes the grown object only if nobody changed it since it was read (a
conditional ``PutObject``: ``If-Match`` its ETag, or ``If-None-Match: *`` for a new one;
HTTP 412 means another writer came first, so it reads again and retries); a local root takes
a POSIX record lock (``lockf``, honoured over NFS too) around one ``O_APPEND`` write.
"""

from __future__ import annotations

import fcntl
import mimetypes
import os
import random
import shutil
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import StorageError
from .settings import Settings

APPEND_ATTEMPTS = 25  # conditional writes tried before an append gives up (each after a jittered pause)
_RACE_CODES = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")


def content_type_for(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


class Storage(ABC):
    """A flat key space under one output root."""

    root: str

    @abstractmethod
    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when there is none."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list_keys(self, prefix: str = "") -> Iterator[str]: ...

    @abstractmethod
    def delete_keys(self, keys: list[str]) -> None:
        """Delete these objects; keys that do not exist are no error."""

    @abstractmethod
    def url_for(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        """A URL a person (or a browser) can open: presigned for S3, ``file://`` locally."""

    @abstractmethod
    def append_text(self, key: str, text: str, content_type: str | None = None) -> None:
        """Add ``text`` (whole lines, each ending in a newline) at the end of the object,
        creating it if need be. Appends by any number of writers, on any machines, all land,
        each whole and in one order; ``StorageError`` if that cannot be done."""

    def location(self, key: str) -> str:
        """Where a key lives, for messages: ``s3://bucket/prefix/key`` or a path."""
        return f"{self.root.rstrip('/')}/{key}"

    def put_text(self, key: str, text: str, content_type: str | None = None) -> None:
        self.put_bytes(key, text.encode(), content_type or content_type_for(key))

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Store a local file's bytes as ``key``; both backends stream it (a multipart upload
        on S3): for objects too big to hold in memory, a million-run job's ``results.jsonl``."""
        self.put_bytes(key, path.read_bytes(), content_type)

    def get_text(self, key: str) -> str:
        return self.get_bytes(key).decode()


class LocalStorage(Storage):
    """A directory. Writes go through a temporary file and a rename, so a reader never
    sees half an object."""

    def __init__(self, root: Path):
        self.path = root.resolve()
        self.root = str(self.path)

    def _file(self, key: str) -> Path:
        target = (self.path / key).resolve()
        if self.path not in target.parents and target != self.path:
            raise StorageError(f"key {key!r} escapes the output root")
        return target

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        target = self._file(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror}") from None

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        target = self._file(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(fd, "wb") as fh, path.open("rb") as source:
                shutil.copyfileobj(source, fh, 1 << 20)
            os.replace(tmp, target)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc.strerror}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._file(key).read_bytes()
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot read {self._file(key)}: {exc.strerror}") from None

    def exists(self, key: str) -> bool:
        return self._file(key).is_file()

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        base = self._file(prefix) if prefix else self.path
        start = base if base.is_dir() else base.parent
        if not start.exists() or not self.path.is_dir():  # a root not made yet holds nothing
            return
        for path in sorted(start.rglob("*")):
            if path.is_file() and not path.name.startswith(".tmp-"):
                key = path.relative_to(self.path).as_posix()
                if key.startswith(prefix):
                    yield key

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._file(key).unlink(missing_ok=True)
            except OSError as exc:
                raise StorageError(f"cannot delete {self._file(key)}: {exc.strerror}") from None

    def url_for(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        return self._file(key).as_uri()

    def append_text(self, key: str, text: str, content_type: str | None = None) -> None:
        target = self._file(key)
        data = text.encode()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # One writer at a time (lockf is a POSIX record lock: NFS clients honour it,
                # where O_APPEND alone does not keep two machines' writes apart).
                fcntl.lockf(fd, fcntl.LOCK_EX)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the lock
        except OSError as exc:
            raise StorageError(f"cannot append to {target}: {exc.strerror}") from None


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → ``("bucket", "some/key")``."""
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"not an s3:// URI: {uri!r}")
    return parsed.netloc, parsed.path.lstrip("/")


@lru_cache(maxsize=8)
def _s3_client(endpoint_url: str | None):
    # boto3 clients are thread-safe and costly to build: one per endpoint per process.
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}, signature_version="s3v4"),
    )


def s3_client(settings: Settings):
    return _s3_client(settings.s3_endpoint_url)


class S3Storage(Storage):
    def __init__(self, uri: str, client):
        self.bucket, prefix = parse_s3_uri(uri)
        self.prefix = prefix.strip("/")
        self.root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.client = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                ContentType=content_type or content_type_for(key),
            )
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from None

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(self.location(key)) from None
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from None

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key),
                                    ExtraArgs={"ContentType": content_type or content_type_for(key)})
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot write {self.location(key)}: {exc}") from None

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise StorageError(f"cannot check {self.location(key)}: {exc}") from None

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        strip = len(self.prefix) + 1 if self.prefix else 0
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", ()):
                    yield obj["Key"][strip:]
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"cannot list {self.location(prefix)}: {exc}") from None

    def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):  # the most one DeleteObjects call takes
            chunk = [{"Key": self._key(key)} for key in keys[start:start + 1000]]
            try:
                answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})
            except (BotoCoreError, ClientError) as exc:
                raise StorageError(f"cannot delete under {self.root}: {exc}") from None
            if answer.get("Errors"):
                first = answer["Errors"][0]
                raise StorageError(f"cannot delete s3://{self.bucket}/{first['Key']}: {first.get('Message')}")

    def url_for(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_s
        )

    def append_text(self, key: str, text: str, content_type: str | None = None) -> None:
        for attempt in range(APPEND_ATTEMPTS):
            body, etag = self._read_with_etag(key)
            if body and not body.endswith(b"\n"):
                body += b"\n"  # a line someone else left unended stays a line of its own
            condition = {"IfMatch": etag} if etag is not None else {"IfNoneMatch": "*"}
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=body + text.encode(),
                                       ContentType=content_type or content_type_for(key), **condition)
                return
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _RACE_CODES:
                    raise StorageError(f"cannot write {self.location(key)}: {exc}") from None
            except BotoCoreError as exc:
                raise StorageError(f"cannot write {self.location(key)}: {exc}") from None
            # Another writer changed it since it was read: read it again, after a short pause
            # that grows, so that a crowd of writers spreads out.
            time.sleep(random.uniform(0, min(1.0, 0.02 * 2 ** min(attempt, 6))))
        raise StorageError(f"cannot append to {self.location(key)}: other writers changed it "
                           f"{APPEND_ATTEMPTS} times in a row")

    def _read_with_etag(self, key: str) -> tuple[bytes, str | None]:
        """The object's bytes and ETag; ``(b"", None)`` when there is none."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return answer["Body"].read(), answer["ETag"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return b"", None
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from None
        except BotoCoreError as exc:
            raise StorageError(f"cannot read {self.location(key)}: {exc}") from None


def open_storage(root: str, settings: Settings) -> Storage:
    """The storage for an output root: ``s3://bucket/prefix`` or a local directory."""
    if root.startswith("s3://"):
        return S3Storage(root, s3_client(settings))
    return LocalStorage(Path(root))


def s3_object_etag(uri: str, settings: Settings) -> str:
    """The ETag of an ``s3://`` reference image: its identity in a run key."""
    bucket, key = parse_s3_uri(uri)
    try:
        return s3_client(settings).head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    except ClientError as exc:
        raise StorageError(f"cannot read {uri}: {exc.response.get('Error', {}).get('Message') or exc}") from None


def presigned_get(uri: str, settings: Settings, expires_s: int = 24 * 3600) -> str:
    """A GET URL the provider can fetch an ``s3://`` reference image from."""
    bucket, key = parse_s3_uri(uri)
    return s3_client(settings).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires_s
    )
