"""The run-key index: which run keys already have an output under an output root.

Incremental runs skip a planned run whose run key has an output (invariant 3), so every
output root keeps an index beside its outputs, as JSON-lines segments under ``_index/jobs/``,
one line ``{"run_key": ..., "output": ...}`` per output:

- ``<job_id>.jsonl``: every output the job made, written when the job finalizes (and again
  after a resume); it replaces the job's batches;
- ``<job_id>.<n>.jsonl``: batch ``n`` of a job still running, written once ``BATCH`` outputs
  wait or the oldest of them has waited ``FLUSH_S`` (at the next output), so a second job
  planned meanwhile sees most of what the first one made, and a job killed with its Redis
  leaves out at most the last few seconds of outputs;
- ``recovered-<time>-<hex>.jsonl``: outputs a plan found by their sidecars (below).

A run's line goes to its job's pending list in Redis in the same Lua step that charges it
(``finish_run.lua``), so a charged output is never missing from the index while Redis keeps
its data: until its batch is written the line is in Redis with the rest of the job's state,
and finalize (which every job reaches: the last run's finish puts it on the to-finalize
list) writes the job's whole index from its results. The Redis side is ``state.IndexPending``.

For a Redis that lost its data (restarted without persistence, flushed, replaced), a job is
marked open in storage from its submit until its whole index is written: one small object
``_index/open/<job_id>.json`` (``OpenMark``). A plan that finds an open job Redis does not
know (or that cannot ask Redis) reads the sidecars of its runs not in the index
(``find_by_sidecars``): an output whose sidecar names the run's key was paid for, and is
skipped at $0 (``pipeline.submission.look_up_done``).

Looking a plan up in the index (``DoneLookup``) is a join of two streams that may each hold a
million keys: the index's lines become two sorted arrays of 16-byte digests (its run keys,
the first line of each winning, with the output each was made at; its output keys), then
the plan's run keys and output keys are looked up in them in batches (numpy's
``searchsorted``) as the plan yields them. What comes out is ``DoneRuns``: a bit per planned
run and the outputs made at another key than the run's own. Memory is 32 bytes a line and
a batch, never a Python set of keys; an empty index costs nothing.

Why batches and not one marker object per output (the layout before this one, still read
under ``_index/runs/``): an object store charges per request, and a marker per run was a
quarter of all the writes a run made. A batch of ``BATCH`` lines is one write.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import secrets
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .errors import StorageError
from .layout import sidecar_key
from .plan import Plan, Run
from .state import IndexPending
from .storage import Storage

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
SEGMENTS = "_index/jobs/"
MARKERS = "_index/runs/"  # one empty object per output, as written before segments
OPEN = "_index/open/"
BATCH = 500
# Pending lines are written once the oldest has waited this long: at the top tier (80
# outputs a second) a batch fills in about 6 s anyway, so writes per job stay under one
# every FLUSH_S seconds whatever the rate.
FLUSH_S = 5.0
READ_THREADS = 16
SIDECAR_THREADS = 10  # boto3 keeps 10 connections per client: more threads would open and drop others


def index_line(run_key: str, output_key: str) -> str:
    return json.dumps({"run_key": run_key, "output": output_key}, separators=(",", ":"))


def batch_key(job_id: str, batch: int) -> str:
    return f"{SEGMENTS}{job_id}.{batch:06d}.jsonl"


def job_key(job_id: str) -> str:
    return f"{SEGMENTS}{job_id}.jsonl"


def write_batch_if_due(pending_lines: IndexPending, storage: Storage, job_id: str, pending: int,
                       waited_s: float = 0.0, *, flush_after_s: float = FLUSH_S) -> None:
    """Write the job's pending lines as a batch once ``BATCH`` of them are waiting, or the
    oldest has waited ``flush_after_s`` (``waited_s``: as ``runs.finish_run`` reports it). A
    batch that cannot be written stays in Redis; finalize covers it."""
    if pending < BATCH and not (pending and waited_s >= flush_after_s):
        return
    taken = pending_lines.take_batch(job_id, min(pending, BATCH))
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
    """Write the job's whole index from its results, then drop its batches and its open mark."""
    with tempfile.TemporaryDirectory(prefix="editpipe-index-") as scratch:
        path = Path(scratch) / "index.jsonl"
        lines = 0
        with path.open("w", encoding="utf-8") as out:
            for r in results:
                if r["status"] == "succeeded" and r["output"]:
                    out.write(index_line(r["run_key"], r["output"]) + "\n")
                    lines += 1
        write_job_index_file(pending_lines, storage, job_id, path if lines else None)


def write_job_index_file(pending_lines: IndexPending, storage: Storage, job_id: str, path: Path | None) -> None:
    """Write the job's whole index from a file of its lines (None: it made no output),
    streamed, then drop its batches and its open mark."""
    if path is not None:
        storage.put_file(job_key(job_id), path, "application/x-ndjson")
    batches = [key for key in storage.list_keys(f"{SEGMENTS}{job_id}.") if key != job_key(job_id)]
    storage.delete_keys(batches)
    pending_lines.forget(job_id)
    close_mark(storage, job_id)


@dataclass(frozen=True)
class OpenMark:
    """A job that may have outputs its index in storage does not list yet: written as it is
    submitted (after Redis has its record), removed once its whole index is written.

    ``fingerprint``: of its runs' keys (``fingerprint``), so that a plan of the same runs
    knows it looked at every output the job could have made. The rest is what rebuilding
    the job from storage needs beside its manifest (``pipeline.recovery``): ``manifest_dir``
    (where its relative paths resolve), the budget it was given, its schedule, priority,
    and whether it was submitted with ``--force``.
    """

    job_id: str
    created_at: str
    runs: int
    fingerprint: str
    manifest_dir: str = ""
    budget_usd: str | None = None
    schedule: str = ""
    priority: int = 1
    force: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> "OpenMark":
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def fingerprint(run_keys: Iterable[str]) -> str:
    """Of a plan's run keys, in plan order: equal for two plans of the same runs."""
    digest = hashlib.sha256()
    for key in run_keys:
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def open_key(job_id: str) -> str:
    return f"{OPEN}{job_id}.json"


def mark_open(storage: Storage, mark: OpenMark) -> None:
    storage.put_text(open_key(mark.job_id), json.dumps(asdict(mark)), "application/json")


def read_mark(storage: Storage, job_id: str) -> OpenMark | None:
    try:
        return OpenMark.from_dict(json.loads(storage.get_text(open_key(job_id))))
    except FileNotFoundError:
        return None


def open_marks(storage: Storage) -> list[OpenMark]:
    """Every job marked open under the output root (one listing; usually none)."""
    keys = [key for key in storage.list_keys(OPEN) if key.endswith(".json")]
    marks = []
    for key in keys:
        try:
            marks.append(OpenMark.from_dict(json.loads(storage.get_text(key))))
        except FileNotFoundError:
            continue  # its job's index was written meanwhile
    return marks


def close_mark(storage: Storage, job_id: str) -> None:
    storage.delete_keys([open_key(job_id)])


def find_by_sidecars(storage: Storage, candidates: Sequence[tuple[str, str]],
                     threads: int = SIDECAR_THREADS) -> dict[str, str]:
    """Of ``(run_key, output_key)`` pairs, those whose output's sidecar is in storage and names
    that run key (an output paid for): run key -> output key. One GET per pair, in parallel."""
    sidecars = read_sidecars(storage, [output for _, output in candidates], threads)
    return {run_key: output for run_key, output in candidates
            if (sidecars.get(output) or {}).get("run_key") == run_key}


def read_sidecars(storage: Storage, output_keys: Sequence[str], threads: int = SIDECAR_THREADS) -> dict[str, dict]:
    """The sidecars in storage of these outputs, by output key (one GET each, in parallel);
    an output without one, or with one editpipe did not write, is left out."""
    if not output_keys:
        return {}
    with ThreadPoolExecutor(min(threads, len(output_keys)), thread_name_prefix="sidecar") as pool:
        read = pool.map(lambda key: _sidecar(storage, key), output_keys)
        return {key: sidecar for key, sidecar in zip(output_keys, read) if sidecar is not None}


def _sidecar(storage: Storage, output_key: str) -> dict | None:
    try:
        sidecar = json.loads(storage.get_text(sidecar_key(output_key)))
    except (FileNotFoundError, ValueError):
        return None
    return sidecar if isinstance(sidecar, dict) and isinstance(sidecar.get("run_key"), str) else None


def write_recovered(storage: Storage, found: dict[str, str]) -> None:
    """Index outputs found by their sidecars, so later plans find them in the index."""
    if not found:
        return
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    text = "".join(index_line(run_key, output) + "\n" for run_key, output in found.items())
    storage.put_text(f"{SEGMENTS}recovered-{stamp}-{secrets.token_hex(4)}.jsonl", text, "application/x-ndjson")


_HEAD, _MIDDLE = b'{"run_key":"', b'","output":"'


def _parse_segment(text: str | bytes) -> Iterator[tuple[str, str]]:
    """A segment's lines, one at a time (a finished million-run job's segment is one object
    of ~130 MB: its lines are never all held as strings at once)."""
    for line in io.BytesIO(text.encode() if isinstance(text, str) else text):
        line = line.rstrip(b"\r\n")
        # The shape index_line writes, read without a JSON parser (a third of the time of a
        # million lines); anything else (an escaped character, other spacing) is parsed.
        if line.startswith(_HEAD) and line[76:88] == _MIDDLE and line.endswith(b'"}') and b"\\" not in line:
            yield line[12:76].decode(), line[88:-2].decode()
        elif line.strip():
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
    """The lines of ``segments`` (keys as listed), read ``READ_THREADS`` at a time in
    parallel: at most that many segments are held at once."""
    if not segments:
        return
    with ThreadPoolExecutor(min(READ_THREADS, len(segments)), thread_name_prefix="index") as pool:
        for start in range(0, len(segments), READ_THREADS):
            window = segments[start:start + READ_THREADS]
            for data in pool.map(_read_segment, [storage] * len(window), window):
                yield from _parse_segment(data)


def _read_segment(storage: Storage, key: str) -> bytes:
    """A segment's text. A batch listed but gone was deleted by its job's finalize after the
    listing; finalize wrote the job's whole index before deleting, so that is read instead
    (outputs whose lines were missed here would be paid for again)."""
    try:
        return storage.get_bytes(key)
    except FileNotFoundError:
        whole = job_key(key[len(SEGMENTS) :].split(".", 1)[0])
        if whole == key:
            return b""  # a job's index is never deleted; gone means the output root was cleared
        try:
            return storage.get_bytes(whole)
        except FileNotFoundError:
            return b""


class DoneRuns(Mapping[str, str]):
    """The runs of a plan whose run key has an output under the output root already.

    Engine code asks by run (``output_of``, ``done_at``: one bit per planned run, no key
    held); as a ``Mapping`` it is run key -> output key in plan order, which walks the plan's
    keys (for tests and small plans)."""

    def __init__(self, plan: Plan):
        import numpy as np

        self._plan = plan
        self._bits = np.zeros(len(plan.runs), dtype=bool)
        self._elsewhere: dict[int, str] = {}  # position -> output, when not the run's own key
        self._count = 0

    def add(self, index: int, output: str, own_output: str) -> None:
        if not self._bits[index]:
            self._bits[index] = True
            self._count += 1
        if output != own_output:
            self._elsewhere[index] = output

    def add_own(self, indices: np.ndarray) -> None:
        """Runs at these positions are done, each at its own output key."""
        self._bits[indices] = True
        self._count = int(self._bits.sum())

    def done_at(self, index: int) -> bool:
        return 0 <= index < len(self._bits) and bool(self._bits[index])

    def output_of(self, run: Run) -> str | None:
        """The output already made for ``run`` (a run of this plan), or None."""
        if not self.done_at(run.index):
            return None
        return self._elsewhere.get(run.index, run.output_key)

    def __len__(self) -> int:
        return self._count

    def _pairs(self) -> Iterator[tuple[str, str]]:
        if not self._count:
            return
        for index, (run_key, output) in enumerate(self._plan.keys_and_outputs()):
            if self._bits[index]:
                yield run_key, self._elsewhere.get(index, output)

    def __iter__(self) -> Iterator[str]:
        return (run_key for run_key, _ in self._pairs())

    def __getitem__(self, run_key: str) -> str:
        for key, output in self._pairs():
            if key == run_key:
                return output
        raise KeyError(run_key)


def _digests(texts: Iterable[str], hex_keys: bool = False) -> np.ndarray:
    """16-byte digests of ``texts`` as one array: the first half of a run key (itself a
    sha256, so its first 128 bits identify it as well as all 256 do for any number of runs
    editpipe meets), or the blake2b-128 of an output key."""
    import numpy as np  # imported when an index is looked up, not by every command

    if hex_keys:
        raw = bytes.fromhex("".join(text[:32] for text in texts))
    else:
        raw = b"".join(hashlib.blake2b(text.encode(), digest_size=16).digest() for text in texts)
    return np.frombuffer(raw, dtype="S16")


class DoneLookup:
    """The output root's index lines as sorted arrays of 16-byte digests (32 bytes a line,
    ~64 MB for a million lines at the peak of building them), asked about a plan's runs in
    batches (see the module docstring). ``add`` the lines, then ``look_up`` the plan."""

    BATCH = 100_000  # lines, or plan runs, turned into digests at once

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []
        self._outputs: list[np.ndarray] = []
        self._index: Callable[[], Iterable[tuple[str, str]]] | None = None
        self.lines = 0

    def __enter__(self) -> DoneLookup:
        return self

    def __exit__(self, *exc: object) -> None:
        self._keys, self._outputs = [], []

    def add(self, lines: Callable[[], Iterable[tuple[str, str]]]) -> None:
        """The index lines ``(run_key, output_key)``, as a callable that gives them (read
        again only for a run made at another output key than its own, which is rare); of two
        lines of one run key the first counts."""
        import numpy as np

        self._index = lines
        it = iter(lines())
        while batch := list(itertools.islice(it, self.BATCH)):
            self.lines += len(batch)
            self._keys.append(_digests((run_key for run_key, _ in batch), hex_keys=True))
            self._outputs.append(_digests(output for _, output in batch))
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, "S16")
        outputs = np.concatenate(self._outputs) if self._outputs else np.empty(0, "S16")
        self._keys, first = np.unique(keys, return_index=True)  # sorted, and each key's first line
        self._made_at = outputs[first]
        self._outputs = np.unique(outputs)

    def look_up(self, plan: Plan, done: DoneRuns | None) -> int:
        """Mark in ``done`` the plan's runs whose run key has a line; returns how many of the
        others have an output key a line names (changed runs). With ``done`` None (``--force``:
        nothing counts as done) every run whose output key a line names is changed."""
        import numpy as np

        changed = 0
        elsewhere: dict[str, list[tuple[int, str]]] = {}  # run key -> (position, own output)
        pairs = plan.keys_and_outputs()
        start = 0
        while batch := list(itertools.islice(pairs, self.BATCH)):
            keys = _digests((run_key for run_key, _ in batch), hex_keys=True)
            outputs = _digests(output for _, output in batch)
            found = np.zeros(len(batch), dtype=bool)
            if done is not None and len(self._keys):
                at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
                found = self._keys[at] == keys
                own = found & (self._made_at[at] == outputs)
                done.add_own(start + np.flatnonzero(own))
                for n in np.flatnonzero(found & ~own):
                    run_key, output = batch[n]
                    elsewhere.setdefault(run_key, []).append((start + int(n), output))
            start += len(batch)
            rest = outputs[~found]
            if len(rest) and len(self._outputs):
                at = np.minimum(np.searchsorted(self._outputs, rest), len(self._outputs) - 1)
                changed += int(np.count_nonzero(self._outputs[at] == rest))
        if elsewhere and done is not None and self._index is not None:
            # Made at another output key than the run's own: that key, from the first line.
            for run_key, output in self._index():
                for index, own in elsewhere.pop(run_key, ()):
                    done.add(index, output, own)
                if not elsewhere:
                    break
        return changed
