"""Catalog feeds and folders as the manifest reads them: rows parsed from a byte stream,
folders from a listing, and what the manifest needs from whatever opens the locations.

``read_feed`` yields one ``Entry`` per row and ``read_folder`` one per product folder, with
nothing checked but their shape: whether an id is usable, a reference well formed or a row a
duplicate is decided by ``catalog_rows``, with the same checks as for inline image sets.

A feed is parsed as a stream, so a 100,000-row feed never sits in memory whole; only the
entries the caller keeps do. Its bytes come from a ``CatalogSources``: ``LOCAL_FILES`` here
reads local paths only; ``pipeline.catalog.Sources`` (an adapter) reads https and ``s3://``
locations too.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Literal, Protocol
from urllib.parse import urlparse

from ..errors import CatalogUnreadable, MissingColumns

FeedFormat = Literal["csv", "jsonl"]


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


class CatalogSources(Protocol):
    """Opens catalog locations: an absolute local path, or a URL (anything with ``://``).

    Both methods raise ``CatalogUnreadable`` for a location they cannot read, so that the
    manifest reports it at ``catalog.feed`` or ``catalog.prefix``.
    """

    def open(self, location: str) -> AbstractContextManager[BinaryIO]:
        """The location's bytes as a stream, which raises ``OSError`` if reading fails midway."""
        ...

    def list(self, location: str) -> Iterator[tuple[str, str, str | None]]:
        """Every file under a folder: (key relative to it, reference, S3 ETag or None)."""
        ...


class LocalFiles:
    """``CatalogSources`` over the local file system only; a URL is unreadable here."""

    @contextmanager
    def open(self, location: str) -> Iterator[BinaryIO]:
        _refuse_url(location)
        path = Path(location)
        try:
            with path.open("rb") as f:
                yield f
        except OSError as exc:
            raise CatalogUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None

    def list(self, location: str) -> Iterator[tuple[str, str, str | None]]:
        """Local references are absolute paths, files sorted within each folder."""
        _refuse_url(location)
        root = Path(location)
        if not root.is_dir():
            raise CatalogUnreadable(f"no folder {root}")
        for folder, dirs, files in os.walk(root, onerror=_raise_unreadable):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(folder, name)
                yield Path(path).relative_to(root).as_posix(), path, None


LOCAL_FILES = LocalFiles()


def _refuse_url(location: str) -> None:
    if "://" in location:
        raise CatalogUnreadable(
            f"cannot read {location}: only local files are read without the network sources (pipeline.catalog.Sources)"
        )


def _raise_unreadable(exc: OSError) -> None:
    raise CatalogUnreadable(f"cannot list {exc.filename}: {exc.strerror or exc}")


def resolve(location: str, base_dir: Path) -> str:
    """A local location as an absolute path (relative ones against ``base_dir``, ``~``
    expanded); a URL as it is."""
    if "://" in location:
        return location
    return str(Path(os.path.abspath(base_dir / os.path.expanduser(location))))


def read_feed(
    location: str,
    sources: CatalogSources,
    *,
    base_dir: Path,
    id_column: str,
    image_columns: Iterable[str],
    var_columns: Iterable[str],
) -> Iterator[Entry]:
    """Each row of a ``.csv`` or ``.jsonl`` feed, in order; blank lines are passed over.

    A local ``location`` is relative to ``base_dir``; issues name it as written.

    Raises ``CatalogUnreadable`` (an unknown extension, a transport failure, text that is not
    UTF-8) and ``MissingColumns`` (a CSV header without a named column) while iterating.
    """
    fmt = feed_format(location)
    if fmt is None:
        raise CatalogUnreadable(f"{location!r}: a feed is a .csv or a .jsonl file")
    image_columns, var_columns = tuple(image_columns), tuple(var_columns)
    parse = _csv_rows if fmt == "csv" else _jsonl_rows
    with sources.open(resolve(location, base_dir)) as raw:
        try:
            yield from parse(_text_lines(raw), id_column, image_columns, var_columns)
        except OSError as exc:
            raise CatalogUnreadable(f"reading {location} failed: {exc}") from None


class FeedNotText(CatalogUnreadable):
    """A feed byte that is not UTF-8, at its 1-based ``line`` and ``col`` (in characters)."""

    def __init__(self, message: str, line: int, col: int):
        super().__init__(message)
        self.line = line
        self.col = col


def _text_lines(raw: BinaryIO) -> Iterator[str]:
    """The feed's lines as text, each with its end (``\\n``, ``\\r\\n`` or a lone ``\\r``, as
    universal newlines split them), a UTF-8 byte-order mark dropped. Raises ``FeedNotText``
    at the first byte that is not UTF-8."""
    number = 0  # lines yielded so far
    for chunk in raw:  # split after each b"\\n"
        try:
            text = chunk.decode("utf-8")
        except UnicodeDecodeError as exc:
            pieces = _lines(chunk[: exc.start].decode("utf-8"))
            if pieces and not pieces[-1].endswith("\r"):
                line, col = number + len(pieces), len(pieces[-1]) + 1
            else:
                line, col = number + len(pieces) + 1, 1
            raise FeedNotText(f"byte 0x{chunk[exc.start]:02x} is not UTF-8; a feed is UTF-8 text", line, col) from None
        if number == 0 and text.startswith("\ufeff"):
            text = text[1:]
        for piece in _lines(text):
            number += 1
            yield piece


def _lines(text: str) -> list[str]:
    """``text`` (at most one ``\\n``, at its end) split after each lone ``\\r`` too."""
    if "\r" not in text[:-2]:
        return [text] if text else []
    return [piece for piece in _LONE_CR.split(text) if piece]


_LONE_CR = re.compile(r"(?<=\r)(?!\n)")


def _csv_rows(
    text: Iterable[str], id_column: str, image_columns: tuple[str, ...], var_columns: tuple[str, ...]
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
    text: Iterable[str], id_column: str, image_columns: tuple[str, ...], var_columns: tuple[str, ...]
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


def read_folder(location: str, pattern: str, sources: CatalogSources, base_dir: Path) -> Iterator[Entry]:
    """One entry per folder holding files that match ``pattern``, sorted by folder.

    ``pattern`` is a glob over keys relative to ``location`` (``*`` and ``?`` stay within
    one segment, ``**`` spans any number of folders); each matching file's folder, as a
    relative path, is the entry's id and its ``folder`` var, its files (sorted) the images.
    Files matched at the top of ``location`` itself have the id ``""``. A local ``location``
    is relative to ``base_dir``.
    """
    matches = compile_pattern(pattern)
    folders: dict[str, list[tuple[str, str | None]]] = {}
    for key, ref, etag in sources.list(resolve(location, base_dir)):
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
