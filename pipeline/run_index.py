"""The run-key index: which run keys already have an output under an output root.

Incremental runs skip a planned run whose run key has an output (invariant 3), so every
output root keeps an index beside its outputs, as JSON-lines segments under ``_index/jobs/``,
one line ``{"run_key": ..., "output": ...}`` per output:

- ``<job_id>.jsonl``: every output the job made, written when the job finalizes (and again
  after a resume); it replaces the job's batches;
- ``<job_id>.<n>.jsonl``: batch ``n`` of a job still running, written every ``BATCH`` outputs,
  so a second job planned meanwhile sees most of what the first one made.

A run's line goes to its job's pending list in Redis in the same Lua step that charges it
(``finish_run.lua``), so a charged output is never missing from the index: until its batch
is written the line is in Redis with the rest of the job's state, and finalize (which every
job reaches: the last run's finish puts it on the to-finalize list) writes the job's whole
index from its results. The Redis side is ``state.IndexPending``.

Why batches and not one marker object per output (the layout before this one, still read
under ``_index/runs/``): an object store charges per request, and a marker per run was a
quarter of all the writes a run made. A batch of ``BATCH`` lines is one write.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import unquote

from .errors import StorageError
from .state import IndexPending
from .storage import Storage

log = logging.getLogger(__name__)
SEGMENTS = "_index/jobs/"
MARKERS = "_index/runs/"  # one empty object per output, as written before segments
BATCH = 500
READ_THREADS = 16


def index_line(run_key: str, output_key: str) -> str:
    return json.dumps({"run_key": run_key, "output": output_key}, separators=(",", ":"))


def batch_key(job_id: str, batch: int) -> str:
    return f"{SEGMENTS}{job_id}.{batch:06d}.jsonl"


def job_key(job_id: str) -> str:
    return f"{SEGMENTS}{job_id}.jsonl"


def write_batch_if_due(pending_lines: IndexPending, storage: Storage, job_id: str, pending: int) -> None:
    """Write the job's pending lines as a batch once ``BATCH`` of them are waiting. A batch
    that cannot be written stays in Redis; finalize covers it."""
    if pending < BATCH:
        return
    taken = pending_lines.take_batch(job_id, BATCH)
    if taken is None:
        return  # another worker took them first
    batch, text = taken
    try:
        storage.put_text(batch_key(job_id, batch), text + "\n", "application/x-ndjson")
    except StorageError as exc:
        log.warning("run index of %s: batch %d not written yet (finalize writes it): %s", job_id, batch, exc)
        return
    pending_lines.batch_written(job_id, batch)


def write_job_index(pending_lines: IndexPending, storage: Storage, job_id: str, results: Iterable[dict]) -> None:
    """Write the job's whole index from its results, then drop its batches."""
    lines = [index_line(r["run_key"], r["output"]) for r in results if r["status"] == "succeeded" and r["output"]]
    if lines:
        storage.put_text(job_key(job_id), "\n".join(lines) + "\n", "application/x-ndjson")
    batches = [key for key in storage.list_keys(f"{SEGMENTS}{job_id}.") if key != job_key(job_id)]
    storage.delete_keys(batches)
    pending_lines.forget(job_id)


def _parse_segment(text: str) -> Iterator[tuple[str, str]]:
    for line in text.splitlines():
        if line.strip():
            entry = json.loads(line)
            yield entry["run_key"], entry["output"]


def read_unwritten(pending_lines: IndexPending, output_root: str) -> Iterator[tuple[str, str]]:
    """``(run_key, output_key)`` of outputs that jobs still running under ``output_root`` have
    made but not yet written to the index in storage (at most a batch each)."""
    for text in pending_lines.unwritten(output_root):
        yield from _parse_segment(text)


def _parse_marker(key: str) -> tuple[str, str] | None:
    """``(run_key, output_key)`` from an old marker's key: ``<run_key>.<quoted output>.done``."""
    name = key.rsplit("/", 1)[-1]
    run_key, dot, rest = name.partition(".")
    if not dot or not rest.endswith(".done"):
        return None
    return run_key, unquote(rest[: -len(".done")])


def read_index(storage: Storage) -> Iterator[tuple[str, str]]:
    """Every ``(run_key, output_key)`` the output root's index holds: one listing, then the
    segments read in parallel (a finished job is one segment)."""
    segments = [key for key in storage.list_keys(SEGMENTS) if key.endswith(".jsonl")]
    yield from read_segments(storage, segments)
    for key in storage.list_keys(MARKERS):
        parsed = _parse_marker(key)
        if parsed is not None:
            yield parsed


def read_segments(storage: Storage, segments: list[str]) -> Iterator[tuple[str, str]]:
    """The lines of ``segments`` (keys as listed), read in parallel."""
    if not segments:
        return
    with ThreadPoolExecutor(min(READ_THREADS, len(segments)), thread_name_prefix="index") as pool:
        for text in pool.map(_read_segment, [storage] * len(segments), segments):
            yield from _parse_segment(text)


def _read_segment(storage: Storage, key: str) -> str:
    """A segment's text. A batch listed but gone was deleted by its job's finalize after the
    listing; finalize wrote the job's whole index before deleting, so that is read instead
    (outputs whose lines were missed here would be paid for again)."""
    try:
        return storage.get_text(key)
    except FileNotFoundError:
        whole = job_key(key[len(SEGMENTS) :].split(".", 1)[0])
        if whole == key:
            return ""  # a job's index is never deleted; gone means the output root was cleared
        try:
            return storage.get_text(whole)
        except FileNotFoundError:
            return ""
