"""Catalog sources: the feeds and folders of ``pipeline.manifest.feeds`` read from wherever
they live (a local file, an https URL through httpx, an ``s3://`` object through boto3).

``Sources`` is the ``CatalogSources`` the manifest is loaded with outside the domain. A feed
is streamed, so a 100,000-row feed never sits in memory whole.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import BinaryIO

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from .errors import CatalogUnreadable
from .manifest.feeds import LOCAL_FILES, compile_pattern
from .settings import Settings
from .storage import s3_client

__all__ = ["Sources", "compile_pattern"]

_READ_CHUNK = 1 << 16


class Sources:
    """Opens catalog locations: absolute local paths, http(s) URLs and ``s3://`` URIs
    (through ``settings``; without settings, S3 locations are unreadable)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings

    def open(self, location: str) -> AbstractContextManager[BinaryIO]:
        """The location's bytes as a stream; raises ``CatalogUnreadable``."""
        if location.startswith(("https://", "http://")):
            return self._open_http(location)
        if location.startswith("s3://"):
            return self._open_s3(location)
        if "://" in location:
            raise CatalogUnreadable(f"{location!r}: a feed is a local path, an https URL or an s3:// URI")
        return LOCAL_FILES.open(location)

    def list(self, location: str) -> Iterator[tuple[str, str, str | None]]:
        """Every file under a folder: (key relative to it, reference, S3 ETag or None).

        Local references are absolute paths; S3 ones ``s3://bucket/key``. Raises
        ``CatalogUnreadable``.
        """
        if location.startswith("s3://"):
            return self._list_s3(location)
        if "://" in location:
            raise CatalogUnreadable(f"{location!r}: a prefix is an s3:// URI or a local folder")
        return LOCAL_FILES.list(location)

    @contextmanager
    def _open_http(self, location: str) -> Iterator[BinaryIO]:
        timeout = self.settings.request_timeout_s if self.settings else 60.0
        try:
            with httpx.stream("GET", location, follow_redirects=True, timeout=timeout) as response:
                if response.status_code >= 400:
                    raise CatalogUnreadable(f"cannot read {location}: HTTP {response.status_code}")
                yield _stream(response.iter_bytes(_READ_CHUNK))
        except httpx.HTTPError as exc:
            raise CatalogUnreadable(f"cannot read {location}: {exc}") from None

    @contextmanager
    def _open_s3(self, location: str) -> Iterator[BinaryIO]:
        bucket, key = self._s3_location(location)
        try:
            body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
            with body:
                yield _stream(body.iter_chunks(_READ_CHUNK))
        except (BotoCoreError, ClientError) as exc:
            raise CatalogUnreadable(f"cannot read {location}: {_s3_message(exc)}") from None

    def _list_s3(self, location: str) -> Iterator[tuple[str, str, str | None]]:
        bucket, prefix = self._s3_location(location, key_required=False)
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        try:
            for page in self._s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", ()):
                    key = obj["Key"]
                    if not key.endswith("/"):  # folder markers some tools create
                        yield key[len(prefix) :], f"s3://{bucket}/{key}", obj["ETag"].strip('"')
        except (BotoCoreError, ClientError) as exc:
            raise CatalogUnreadable(f"cannot list {location}: {_s3_message(exc)}") from None

    def _s3_location(self, location: str, *, key_required: bool = True) -> tuple[str, str]:
        bucket, _, key = location[len("s3://") :].partition("/")
        if not bucket or (key_required and not key):
            raise CatalogUnreadable(f"{location!r} is not an s3://bucket/{'key' if key_required else 'prefix/'} URI")
        return bucket, key

    def _s3(self):
        if self.settings is None:
            raise CatalogUnreadable("reading an s3:// catalog needs the S3 settings (S3_ENDPOINT_URL, AWS_*)")
        return s3_client(self.settings)


class _ChunkStream(io.RawIOBase):
    """A readable binary stream over an iterator of byte chunks (an HTTP or S3 body); a
    transport failure while reading is an ``OSError``, as for a file."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            try:
                chunk = next(self._chunks, None)
            except (httpx.HTTPError, BotoCoreError, ClientError) as exc:
                raise OSError(str(exc)) from exc
            if chunk is None:
                return 0
            self._pending = chunk
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


def _stream(chunks: Iterator[bytes]) -> BinaryIO:
    return io.BufferedReader(_ChunkStream(chunks), buffer_size=_READ_CHUNK)  # type: ignore[return-value]


def _s3_message(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return error.get("Message") or error.get("Code") or str(exc)
    return str(exc)
