"""Catalogs: image sets read from a feed (CSV or JSONL) or from a folder of product folders.

This module reads; the manifest judges. ``read_feed`` yields one ``Entry`` per row and
``read_folder`` one per product folder, with nothing checked but their shape: whether an id
is usable, a reference well formed or a row a duplicate is decided by ``pipeline.manifest``
(``catalog_rows``), with the same checks as for inline image sets.

A feed is read as a stream from wherever it lives (a local file, an https URL through
httpx, an ``s3://`` object through boto3), so a 100,000-row feed never sits in memory
whole; only the entries the caller keeps do.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal
from urllib.parse import urlparse

import httpx
from botocore.exceptions import BotoCoreError, ClientError

from .errors import CatalogUnreadable, MissingColumns
from .settings import Settings
from .storage import s3_client

FeedFormat = Literal["csv", "jsonl"]
_READ_CHUNK = 1 << 16




@dataclass(slots=True)  # not frozen: built once per row, and frozen ones build 3 times slower
class Entry:
    """One feed row or product folder, as read.

    ``line`` is the feed line the row starts on (1-based; 0 for a folder). ``images`` pairs
    each non-empty reference with the column it came from (``""`` for a folder's files);
    ``etags`` is parallel to ``images`` when the listing gave them (S3 folders), else empty.
    ``vars`` holds every declared var column, ``""`` where the cell is empty or absent.
    ``problem`` is ``(field, message)`` when the row could not be read at all.
    """

    line: int
    id: str
    images: tuple[tuple[str, str], ...]
    vars: dict[str, str]
    etags: tuple[str, ...] = ()
    problem: tuple[str, str] | None = None


def feed_format(location: str) -> FeedFormat | None:
    """``csv`` or ``jsonl`` by the extension of the location's path (a URL's query is ignored)."""
    path = urlparse(location).path if "://" in location else location
    suffix = os.path.splitext(path)[1].lower()
    return {".csv": "csv", ".jsonl": "jsonl"}.get(suffix)  # type: ignore[return-value]


class Sources:
    """Opens catalog locations: local paths (relative to ``base_dir``), http(s) URLs and
    ``s3://`` URIs (through ``settings``; without settings, S3 locations are unreadable)."""

    def __init__(self, base_dir: Path, settings: Settings | None = None):
        self.base_dir = base_dir
        self.settings = settings

    def local(self, location: str) -> Path:
        return Path(os.path.abspath(self.base_dir / os.path.expanduser(location)))

    @contextmanager
    def open(self, location: str) -> Iterator[BinaryIO]:
        """The location's bytes as a stream; raises ``CatalogUnreadable``."""
        if location.startswith(("https://", "http://")):
            timeout = self.settings.request_timeout_s if self.settings else 60.0
            try:
                with httpx.stream("GET", location, follow_redirects=True, timeout=timeout) as response:
                    if response.status_code >= 400:
                        raise CatalogUnreadable(f"cannot read {location}: HTTP {response.status_code}")
                    yield _stream(response.iter_bytes(_READ_CHUNK))
            except httpx.HTTPError as exc:
                raise CatalogUnreadable(f"cannot read {location}: {exc}") from None
        elif location.startswith("s3://"):
            bucket, key = self._s3_location(location)
            try:
                body = self._s3().get_object(Bucket=bucket, Key=key)["Body"]
                with body:
                    yield _stream(body.iter_chunks(_READ_CHUNK))
            except (BotoCoreError, ClientError) as exc:
                raise CatalogUnreadable(f"cannot read {location}: {_s3_message(exc)}") from None
        elif "://" in location:
            raise CatalogUnreadable(f"{location!r}: a feed is a local path, an https URL or an s3:// URI")
        else:
            path = self.local(location)
            try:
                with path.open("rb") as f:
                    yield f
            except OSError as exc:
                raise CatalogUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None

    def list(self, location: str) -> Iterator[tuple[str, str, str | None]]:
        """Every file under a folder: (key relative to it, reference, S3 ETag or None).

        Local references are absolute paths; S3 ones ``s3://bucket/key``. Raises
        ``CatalogUnreadable``.
        """
        if location.startswith("s3://"):
            yield from self._list_s3(location)
        elif "://" in location:
            raise CatalogUnreadable(f"{location!r}: a prefix is an s3:// URI or a local folder")
        else:
            yield from self._list_local(self.local(location))

    def _list_local(self, root: Path) -> Iterator[tuple[str, str, str | None]]:
        if not root.is_dir():
            raise CatalogUnreadable(f"no folder {root}")
        for folder, dirs, files in os.walk(root, onerror=_raise_unreadable):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                yield Path(path).relative_to(root).as_posix(), path, None

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


def read_feed(
    location: str,
    sources: Sources,
    *,
    id_column: str,
    image_columns: Iterable[str],
    var_columns: Iterable[str],
) -> Iterator[Entry]:
    """Each row of a ``.csv`` or ``.jsonl`` feed, in order; blank lines are passed over.

    Raises ``CatalogUnreadable`` (an unknown extension, a transport failure, text that is not
    UTF-8) and ``MissingColumns`` (a CSV header without a named column) while iterating.
    """
    fmt = feed_format(location)
    if fmt is None:
        raise CatalogUnreadable(f"{location!r}: a feed is a .csv or a .jsonl file")
    image_columns, var_columns = tuple(image_columns), tuple(var_columns)
    parse = _csv_rows if fmt == "csv" else _jsonl_rows
    with sources.open(location) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="" if fmt == "csv" else None)
        try:
            yield from parse(text, id_column, image_columns, var_columns)
        except UnicodeDecodeError:
            raise CatalogUnreadable(f"{location} is not UTF-8 text") from None
        except (httpx.HTTPError, BotoCoreError, ClientError, OSError) as exc:
            raise CatalogUnreadable(f"reading {location} failed: {exc}") from None


def _csv_rows(
    text: io.TextIOBase, id_column: str, image_columns: tuple[str, ...], var_columns: tuple[str, ...]
) -> Iterator[Entry]:
    reader = csv.reader(text)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        return
    position = {name: i for i, name in reversed(list(enumerate(header)))}
    missing = [name for name in dict.fromkeys((id_column, *image_columns, *var_columns)) if name not in position]
    if missing:
        raise MissingColumns(missing, header)
    id_at = position[id_column]
    images_at = [(name, position[name]) for name in image_columns]
    vars_at = [(name, position[name]) for name in var_columns]
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield Entry(line, "", (), {}, problem=("row", f"not a CSV row: {exc}"))
            continue
        if not any(cells):  # a blank line
            continue
        if len(cells) < len(header):  # a short row: the cells it lacks are empty
            cells += [""] * (len(header) - len(cells))
        images = tuple((name, ref) for name, i in images_at if (ref := cells[i].strip()))
        yield Entry(line, cells[id_at].strip(), images, {name: cells[i] for name, i in vars_at})


def _jsonl_rows(
    text: io.TextIOBase, id_column: str, image_columns: tuple[str, ...], var_columns: tuple[str, ...]
) -> Iterator[Entry]:
    for line, raw in enumerate(text, start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError as exc:
            yield Entry(line, "", (), {}, problem=("row", f"not JSON: {exc}"))
            continue
        if not isinstance(row, dict):
            yield Entry(line, "", (), {}, problem=("row", "a JSONL row is a JSON object"))
            continue
        try:
            entry_id = _text(row.get(id_column), id_column).strip()
            images = tuple(
                (name, ref)
                for name in image_columns
                for ref in _references(row.get(name), name)
            )
            values = {name: _text(row.get(name), name) for name in var_columns}
        except _NotText as exc:
            yield Entry(line, "", (), {}, problem=(exc.column, exc.message))
            continue
        yield Entry(line, entry_id, images, values)


class _NotText(Exception):
    def __init__(self, column: str, message: str):
        self.column = column
        self.message = message


def _text(value: object, column: str) -> str:
    """A JSON value as a cell's text: strings as they are, numbers and booleans as JSON writes them."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, int, float)):
        return json.dumps(value)
    raise _NotText(column, f"must be text or a number, not {type(value).__name__}")


def _references(value: object, column: str) -> list[str]:
    """An image column's references: one string, or a list of strings in JSONL."""
    values = value if isinstance(value, list) else [value]
    refs = [_text(item, column).strip() for item in values]
    return [ref for ref in refs if ref]


def read_folder(location: str, pattern: str, sources: Sources) -> Iterator[Entry]:
    """One entry per folder holding files that match ``pattern``, sorted by folder.

    ``pattern`` is a glob over keys relative to ``location`` (``*`` and ``?`` stay within
    one segment, ``**`` spans any number of folders); each matching file's folder, as a
    relative path, is the entry's id and its ``folder`` var, its files (sorted) the images.
    Files matched at the top of ``location`` itself have the id ``""``.
    """
    matches = compile_pattern(pattern)
    folders: dict[str, list[tuple[str, str | None]]] = {}
    for key, ref, etag in sources.list(location):
        if matches(key):
            folder = key.rpartition("/")[0]
            folders.setdefault(folder, []).append((ref, etag))
    for folder in sorted(folders):
        files = sorted(folders[folder])
        etags = tuple(etag for _, etag in files if etag is not None)
        yield Entry(0, folder, tuple(("", ref) for ref, _ in files), {"folder": folder},
                    etags=etags if len(etags) == len(files) else ())


def compile_pattern(pattern: str) -> Callable[[str], bool]:
    """A matcher for ``/``-separated keys: ``*``, ``?`` and ``[...]`` within one segment,
    ``**`` for any number of whole folders (``**/*.jpg`` also matches ``a.jpg``)."""
    segments = pattern.strip("/").split("/")
    regex = ""
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            regex += "(?:[^/]+/)*" + ("[^/]+" if last else "")
        else:
            regex += _segment_regex(segment) + ("" if last else "/")
    compiled = re.compile(regex + r"\Z", re.DOTALL)
    return lambda key: compiled.match(key) is not None


def _segment_regex(segment: str) -> str:
    out, i = "", 0
    while i < len(segment):
        c = segment[i]
        i += 1
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[" and (close := segment.find("]", i + 1 if segment[i : i + 1] in ("!", "]") else i)) != -1:
            body = segment[i:close]
            i = close + 1
            negate = body.startswith("!")
            body = body[1:] if negate else body
            out += "[" + ("^/" if negate else "") + "".join("\\" + ch if ch in "\\[]^" else ch for ch in body) + "]"
        else:
            out += re.escape(c)
    return out


class _ChunkStream(io.RawIOBase):
    """A readable binary stream over an iterator of byte chunks (an HTTP or S3 body)."""

    def __init__(self, chunks: Iterator[bytes]):
        self._chunks = chunks
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
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


def _raise_unreadable(exc: OSError) -> None:
    raise CatalogUnreadable(f"cannot list {exc.filename}: {exc.strerror or exc}")
