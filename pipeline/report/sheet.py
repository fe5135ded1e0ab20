"""The contact sheet's pictures: which thumbnails to make, and what each picture links to.

Local references are read from the path recorded in the run, ``s3://`` ones through the
output's S3 client; ``http(s)`` references are shown as they are. Links are relative for a
local output root, so the folder can be moved or zipped, and presigned for S3 (valid
``LINK_TTL_S``). A picture left without a thumbnail is shown from its full image.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from ..layout import input_thumb_key, output_thumb_key, page_key, job_prefix, thumbs_prefix
from ..plan import InputRef, Run
from ..records import RunResult
from ..storage import LocalStorage, S3Storage, Storage, parse_s3_uri
from ..thumbnails import ThumbTask

LINK_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Picture:
    """One image on the sheet: ``src`` to show (a thumbnail when there is one), ``href`` to
    open, or neither (an image this report cannot reach), with a ``title`` either way."""

    src: str | None
    href: str | None
    title: str


class Links:
    """URLs of storage keys and reference images as a report page should write them."""

    def __init__(self, storage: Storage, prefix: str):
        self.storage = storage
        self.prefix = prefix
        self.local = isinstance(storage, LocalStorage)
        self.s3 = storage.client if isinstance(storage, S3Storage) else None
        self._cache: dict[str, str] = {}

    def key(self, key: str) -> str:
        if self.local:
            return posixpath.relpath(key, self.prefix)
        if key not in self._cache:
            self._cache[key] = self.storage.url_for(key, LINK_TTL_S)
        return self._cache[key]

    def s3_object(self, uri: str) -> str | None:
        if self.s3 is None:
            return None
        if uri not in self._cache:
            bucket, key = parse_s3_uri(uri)
            self._cache[uri] = self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=LINK_TTL_S
            )
        return self._cache[uri]


def report_location(storage: Storage, job_id: str) -> str:
    """Where a person opens the report: a local path, or a presigned URL (7 days) on S3."""
    key = page_key(job_prefix(job_id), 1)
    if isinstance(storage, LocalStorage):
        return str(storage.path / key)
    return storage.url_for(key, LINK_TTL_S)


def input_name(ref: InputRef) -> str:
    return posixpath.basename(ref.uri.split("?", 1)[0]) or ref.uri


class Varying:
    """Options that differ between runs of a job (the ones worth a caption), learnt one
    result at a time: at most two values kept per option."""

    def __init__(self) -> None:
        self._seen: dict[str, set[str]] = {}

    def add(self, result: RunResult) -> None:
        for name, value in result.options.items():
            values = self._seen.setdefault(name, set())
            if len(values) < 2:
                values.add(str(value))

    @property
    def names(self) -> list[str]:
        return [name for name, values in self._seen.items() if len(values) > 1]


def varying_options(results: Iterable[RunResult]) -> list[str]:
    """Options that differ between runs of this job: the ones worth a caption."""
    varying = Varying()
    for r in results:
        varying.add(r)
    return varying.names


class Sheet:
    """Decides, for the runs on one page of the sheet (``results``, with their planned
    ``runs`` by index), which thumbnails to make and what to show.

    A job's report is written page by page; what its pages share is given: the option
    names worth a caption, the thumbnails already made (``thumbs``: updated as more are
    made), the links (``links``), the number of results (``total``) and its failed runs with
    their positions (``failed``, for the table on page 1). Left out, they are those of
    ``results`` alone (a job of one page)."""

    def __init__(self, storage: Storage, prefix: str, runs: dict[int, Run], results: list[RunResult], *,
                 option_names: list[str] | None = None, thumbs: set[str] | None = None, links: Links | None = None,
                 total: int | None = None, failed: list[tuple[int, RunResult]] | None = None):
        self.storage = storage
        self.prefix = prefix
        self.runs = runs
        self.results = results
        self.links = links or Links(storage, prefix)
        self.thumbs: set[str] = thumbs if thumbs is not None else set(storage.list_keys(thumbs_prefix(prefix)))
        self.option_names = option_names if option_names is not None else varying_options(results)
        self.total = len(results) if total is None else total
        self.failed = failed if failed is not None else [(n, r) for n, r in enumerate(results) if r.failed]

    def _input_reader(self, ref: InputRef) -> Callable[[], bytes] | None:
        if ref.kind == "local":
            path = Path(ref.uri)
            return path.read_bytes
        if ref.kind == "s3" and self.links.s3 is not None:
            bucket, key = parse_s3_uri(ref.uri)
            client = self.links.s3
            return lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return None

    def tasks(self) -> list[ThumbTask]:
        """Missing thumbnails in sheet order, so that the first pages are served first."""
        tasks: list[ThumbTask] = []
        made = self.thumbs
        planned: set[str] = set()
        for result in self.results:
            run = self.runs.get(result.index)
            for ref in run.inputs if run else ():
                key = input_thumb_key(self.prefix, ref)
                read = None if key in planned or key in made else self._input_reader(ref)
                if read is not None:
                    planned.add(key)
                    tasks.append(ThumbTask(key, read, input_name(ref)))
            output = result.shown_output
            if output and not result.thumbnail:
                key = output_thumb_key(self.prefix, result.index)
                if key not in planned and key not in made:
                    planned.add(key)
                    tasks.append(ThumbTask(key, lambda output=output: self.storage.get_bytes(output), output))
        return tasks

    def output(self, result: RunResult) -> Picture:
        key = result.output or ""
        full = self.links.key(key)
        if result.thumbnail:  # made when the output was collected
            return Picture(self.links.key(result.thumbnail), full, key)
        thumb = output_thumb_key(self.prefix, result.index)
        return Picture(self.links.key(thumb) if thumb in self.thumbs else full, full, key)

    def input(self, ref: InputRef) -> Picture:
        thumb = input_thumb_key(self.prefix, ref)
        src = self.links.key(thumb) if thumb in self.thumbs else None
        name = input_name(ref)
        if ref.kind == "local":
            # The original is on the machine that submitted the job: link it from a local
            # report, link the thumbnail from a shared (S3) one.
            href = Path(ref.uri).absolute().as_uri() if self.links.local else src
            if src is None and self.links.local and Path(ref.uri).is_file():
                src = href
            return Picture(src, href, f"{name} (local file)")
        if ref.kind == "s3":
            full = self.links.s3_object(ref.uri)
            return Picture(src or full, full, ref.uri)
        return Picture(src or ref.uri, ref.uri, ref.uri)
