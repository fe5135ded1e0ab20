"""Schedules: manifests run on a cron, each start guarded against overlap (manifest.md,
"Schedules").

- The schedules file (``Schedule``, ``load_schedules``, ``next_run``…) is read and checked
  by ``pipeline.schedules_file``; its names are importable from here too.
- ``start_schedule`` starts one run: prepare (incremental: runs already done are skipped at
  $0) and submit with the schedule's budget, name and webhook. A schedule never starts while
  its previous run is active: its lock in Redis (``ep:schedule:<name>:lock``) holds the job
  id of the run in progress, so it outlives a restart of beat; a start that finds it held by
  an active job is skipped and recorded, and a lock left by a finished job is taken over.
- Every start, skipped or failed one is recorded (``ScheduleState``): the last one for
  ``editpipe schedules``, and a capped history.
- A start records how many of its runs are new, changed or unchanged (``submission``
  finds them in the output root's index of done runs).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import redis
from botocore.exceptions import BotoCoreError, ClientError

from .errors import EditpipeError, ManifestError, ManifestIssue, SettingsError
from .jobs import PREFIX, JobStore, _load_script
from .ledger import utc_now
from .schedules_file import (
    Schedule,
    ScheduleDoc,
    SchedulesFileError,
    find_schedule,
    load_schedules,
    next_run,
    parse_schedules,
)
from .settings import Settings
from .storage import parse_s3_uri, s3_client
from .submission import Finalize, Prepared, RunChanges, prepare, submit

# With the schedules file's names, importable from here as they always were.
__all__ = [
    "HISTORY_LENGTH",
    "START_TTL_S",
    "STARTING",
    "Schedule",
    "ScheduleDoc",
    "ScheduleState",
    "SchedulesFileError",
    "Start",
    "find_schedule",
    "job_is_active",
    "load_schedules",
    "next_run",
    "parse_schedules",
    "prepare_schedule",
    "schedule_jobs",
    "start_by_name",
    "start_schedule",
]

log = logging.getLogger(__name__)

# A start that dies between taking the lock and submitting (a killed process) blocks its
# schedule this long at most; preparing a very large catalog takes minutes, not an hour.
START_TTL_S = 3600
HISTORY_LENGTH = 100
STARTING = "starting:"

Outcome = Literal["started", "skipped_overlap", "failed"]


# --- State in Redis ------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """What one trigger of a schedule did."""

    schedule: str
    outcome: Outcome
    at: str
    trigger: str
    job_id: str = ""
    reason: str = ""
    changes: RunChanges | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at, "trigger": self.trigger, "outcome": self.outcome,
            "job_id": self.job_id or None, "reason": self.reason or None,
        }
        if self.changes is not None:
            out.update(self.changes.fields())
        return out


class ScheduleState:
    """A schedule's lock and records in Redis.

    ``ep:schedule:<name>:lock`` holds the job id of the run in progress, or
    ``starting:<token>`` while a start prepares (expiring after ``START_TTL_S``, in case the
    starter dies); every change to it is one compare-and-set script call, so two triggers
    racing for it cannot both win. ``:last`` is the last trigger's record (JSON) and
    ``:history`` the last ``HISTORY_LENGTH`` of them, newest first.
    """

    def __init__(self, client: redis.Redis, name: str):
        self.r = client
        self.name = name
        self._cas = _load_script(client, "schedule_lock.lua")

    def key(self, part: str) -> str:
        return f"{PREFIX}:schedule:{self.name}:{part}"

    def holder(self) -> str | None:
        return self.r.get(self.key("lock"))

    def acquire(self, token: str, is_active: Callable[[str], bool]) -> str | None:
        """Take the lock for a start identified by ``token``. Returns None when taken, or
        the job id (or ``starting:…``) that holds it. A lock held by a job that is no longer
        active is taken over; the same ``token`` (a redelivered task) takes its own back."""
        mine = STARTING + token
        for _ in range(5):
            seen = self.holder() or ""
            if seen == mine:
                return None
            if seen.startswith(STARTING) or (seen and is_active(seen)):
                return seen
            if self._set(seen, mine, START_TTL_S * 1000):
                return None
        return self.holder() or STARTING  # lost every race: another start holds it

    def hand_over(self, token: str, job_id: str) -> None:
        """The start submitted ``job_id``: the lock now holds it until another start finds it
        finished."""
        if not self._set(STARTING + token, job_id, 0):
            log.warning("schedule %s: the lock of start %s had expired before job %s was submitted",
                        self.name, token, job_id)

    def release(self, token: str) -> None:
        """The start submitted nothing: free the lock (if it is still this start's)."""
        self._set(STARTING + token, "", 0)

    def _set(self, seen: str, value: str, ttl_ms: int) -> bool:
        return bool(self._cas(keys=[self.key("lock")], args=[seen, value, ttl_ms]))

    def record(self, start: Start) -> None:
        line = json.dumps(start.to_dict(), separators=(",", ":"))
        pipe = self.r.pipeline(transaction=True)
        pipe.set(self.key("last"), line)
        pipe.lpush(self.key("history"), line)
        pipe.ltrim(self.key("history"), 0, HISTORY_LENGTH - 1)
        pipe.execute()

    def last(self) -> dict[str, Any] | None:
        raw = self.r.get(self.key("last"))
        return json.loads(raw) if raw else None

    def history(self, limit: int = HISTORY_LENGTH) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.r.lrange(self.key("history"), 0, limit - 1)]


def job_is_active(jobs: JobStore, job_id: str) -> bool:
    """Still queued or running; a job Redis no longer knows is over."""
    try:
        return not jobs.status(job_id).done
    except EditpipeError:
        return False


# --- Starting a run ------------------------------------------------------------------------


def prepare_schedule(schedule: Schedule, settings: Settings, jobs: JobStore | None = None) -> Prepared:
    """``submission.prepare`` for a schedule's manifest, a local path or an ``s3://`` URI
    (read with the S3 settings; its issues name the URI; local paths in it mean nothing)."""
    if not schedule.manifest.startswith("s3://"):
        path = Path(schedule.manifest)
        if not path.is_file():
            raise SchedulesFileError([schedule.issue(f"schedule {schedule.name!r}: no manifest at {path}")])
        return prepare(path, settings, jobs=jobs)
    body = _read_s3_manifest(schedule, settings)
    with tempfile.TemporaryDirectory(prefix="editpipe-schedule-") as tmp:
        path = Path(tmp) / (posixpath.basename(schedule.manifest) or "manifest.yaml")
        path.write_bytes(body)
        try:
            prepared = prepare(path, settings, jobs=jobs)
        except ManifestError as exc:
            raise ManifestError(
                [dataclasses.replace(i, file=schedule.manifest) if i.file == str(path) else i for i in exc.issues]
            ) from None
    if not prepared.storage.root.startswith("s3://"):
        line = _line_of(body, "output") or 1
        raise ManifestError([ManifestIssue(schedule.manifest, line, 1, "output",
                                           "a manifest in S3 writes to an s3:// output, not a local folder")])
    return prepared


def _read_s3_manifest(schedule: Schedule, settings: Settings) -> bytes:
    bucket, key = parse_s3_uri(schedule.manifest)
    try:
        return s3_client(settings).get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        detail = exc.response.get("Error", {}).get("Message") or exc.response.get("Error", {}).get("Code") or str(exc)
        message = f"schedule {schedule.name!r}: cannot read {schedule.manifest}: {detail}"
    except BotoCoreError as exc:
        message = f"schedule {schedule.name!r}: cannot read {schedule.manifest}: {exc}"
    raise SchedulesFileError([schedule.issue(message)])


def _line_of(body: bytes, key: str) -> int | None:
    for number, line in enumerate(body.decode("utf-8", "replace").splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    return None


def start_schedule(
    schedule: Schedule,
    settings: Settings,
    jobs: JobStore,
    enqueue: Callable[[str], None],
    *,
    finalize: Finalize,
    token: str,
    trigger: str,
) -> Start:
    """Start one run of ``schedule`` now, unless its previous run is still active.

    ``token`` names this start (a Celery task id: a redelivered task is the same start);
    ``trigger`` says who asked (``beat``, ``manual``) in the records. A skipped start is
    returned (and recorded); a start that fails raises, once recorded as ``failed``.
    """
    state = ScheduleState(jobs.r, schedule.name)
    holder = state.acquire(token, lambda job_id: job_is_active(jobs, job_id))
    if holder is not None:
        start = _skipped(schedule, holder, trigger, jobs)
        state.record(start)
        return start
    try:
        prepared = prepare_schedule(schedule, settings, jobs)
        changes = prepared.changes
        job_id = submit(prepared, jobs, enqueue, finalize=finalize, budget_usd=schedule.budget_usd,
                        schedule=schedule.name, notify_url=schedule.notify)
    except BaseException as exc:
        state.release(token)
        if isinstance(exc, Exception):
            state.record(Start(schedule.name, "failed", utc_now(), trigger, reason=_reason(exc)))
        raise
    state.hand_over(token, job_id)
    start = Start(schedule.name, "started", utc_now(), trigger, job_id=job_id, changes=changes)
    state.record(start)
    return start


def _skipped(schedule: Schedule, holder: str, trigger: str, jobs: JobStore) -> Start:
    if holder.startswith(STARTING) or not holder:
        return Start(schedule.name, "skipped_overlap", utc_now(), trigger,
                     reason="another start of this schedule is preparing its run")
    try:
        status = jobs.status(holder).status
    except EditpipeError:
        status = "active"
    return Start(schedule.name, "skipped_overlap", utc_now(), trigger, job_id=holder,
                 reason=f"the previous run {holder} is still {status}")


def _reason(exc: Exception, limit: int = 5) -> str:
    if isinstance(exc, ManifestError):
        lines = [str(issue) for issue in exc.issues]
        more = f" (and {len(lines) - limit} more)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more
    return str(exc) or type(exc).__name__


def schedule_jobs(settings: Settings) -> JobStore:
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: schedules keep their locks and records in the workers' Redis")
    return JobStore.from_url(settings.redis_url)


def start_by_name(
    settings: Settings, name: str, enqueue: Callable[[str], None], *, finalize: Finalize, token: str, trigger: str
) -> Start:
    """Load the schedules file and start the schedule called ``name`` (``start_schedule``)."""
    jobs = schedule_jobs(settings)
    schedule = find_schedule(load_schedules(settings.schedules_file), name, settings.schedules_file)
    return start_schedule(schedule, settings, jobs, enqueue, finalize=finalize, token=token, trigger=trigger)
