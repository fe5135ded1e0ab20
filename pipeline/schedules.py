"""Schedules: manifests run on a cron, each start guarded against overlap (manifest.md,
"Schedules").

- The schedules file (``Schedule``, ``load_schedules``, ``next_run``…) is read and checked
  by ``pipeline.schedules_file``; its names are importable from here too.
- ``start_schedule`` starts one run: prepare (incremental: runs already done are skipped at
  $0) and submit with the schedule's budget, name and webhook. A schedule never starts while
  its previous run is active: its lock in Redis (``ScheduleState``) holds the job
  id of the run in progress, so it outlives a restart of beat; a start that finds it held by
  an active job is skipped and recorded, and a lock left by a finished job is taken over.
- Every start, skipped or failed one is recorded (``ScheduleState``): the last one for
  ``editpipe schedules``, and a capped history.
- A start records how many of its runs are new, changed or unchanged (``submission``
  finds them in the output root's index of done runs).
- Times beat missed (``due_time``, ``start_schedule``'s ``scheduled_for``): the last cron
  time beat handled is kept in Redis, not in beat's own file, so a beat that was stopped,
  moved or started twice agrees with the others. When beat is back after missing one or more
  times, the latest of them is due once (the earlier ones are folded into it and counted);
  it starts if it is at most the schedule's ``catch_up`` late (6 hours unless set), and is
  recorded as ``skipped_missed`` otherwise. A time is claimed atomically before its start is
  sent, so two beats never start it twice. A new schedule, or one whose cron changed, has
  missed nothing: its first time is the next one.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Literal, NamedTuple

from botocore.exceptions import BotoCoreError, ClientError

from .errors import EditpipeError, ManifestError, ManifestIssue, SettingsError
from .ledger import utc_now
from .manifest.checks import publish_problems
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
from .state import ScheduleState as ScheduleState, State
from .state.schedules import HISTORY_LENGTH, START_TTL_S, STARTING
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
    "CronTime",
    "claim_time",
    "due_time",
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

Outcome = Literal["started", "skipped_overlap", "skipped_missed", "failed"]
# A start this long after its cron time is a catch-up (recorded as such), not an on-time start.
ON_TIME = timedelta(minutes=1)
MISSED_COUNTED = 10_000  # missed times counted at most (an every-minute cron down for a week)


# --- Starting a schedule -------------------------------------------------------------------


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
    scheduled_for: str = ""  # the cron time this start is for (ISO, UTC), when beat sent it

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "at": self.at, "trigger": self.trigger, "outcome": self.outcome,
            "job_id": self.job_id or None, "reason": self.reason or None,
        }
        if self.scheduled_for:
            out["scheduled_for"] = self.scheduled_for
        if self.changes is not None:
            out.update(self.changes.fields())
        return out


def job_is_active(state: State, job_id: str) -> bool:
    """Still queued or running; a job Redis no longer knows is over."""
    try:
        return not state.jobs.status(job_id).done
    except EditpipeError:
        return False


# --- Starting a run ------------------------------------------------------------------------


def prepare_schedule(schedule: Schedule, settings: Settings, state: State | None = None) -> Prepared:
    """``submission.prepare`` for a schedule's manifest, a local path or an ``s3://`` URI
    (read with the S3 settings; its issues name the URI; local paths in it mean nothing)."""
    if not schedule.manifest.startswith("s3://"):
        path = Path(schedule.manifest)
        if not path.is_file():
            raise SchedulesFileError([schedule.issue(f"schedule {schedule.name!r}: no manifest at {path}")])
        return _with_publish(schedule, prepare(path, settings, state=state))
    body = _read_s3_manifest(schedule, settings)
    with tempfile.TemporaryDirectory(prefix="editpipe-schedule-") as tmp:
        path = Path(tmp) / (posixpath.basename(schedule.manifest) or "manifest.yaml")
        path.write_bytes(body)
        try:
            prepared = prepare(path, settings, state=state)
        except ManifestError as exc:
            raise ManifestError(
                [dataclasses.replace(i, file=schedule.manifest) if i.file == str(path) else i for i in exc.issues]
            ) from None
    if not prepared.storage.root.startswith("s3://"):
        line = _line_of(body, "output") or 1
        raise ManifestError([ManifestIssue(schedule.manifest, line, 1, "output",
                                           "a manifest in S3 writes to an s3:// output, not a local folder")])
    return _with_publish(schedule, prepared)


def _with_publish(schedule: Schedule, prepared: Prepared) -> Prepared:
    """The schedule's own ``publish`` block, if it has one, in place of its manifest's."""
    if schedule.publish is None:
        return prepared
    problems = publish_problems(prepared.manifest, prepared.specs, schedule.publish)
    if problems:
        raise SchedulesFileError([schedule.publish_issue(problem) for problem in problems])
    return dataclasses.replace(prepared, manifest=dataclasses.replace(prepared.manifest, publish=schedule.publish))


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
    state: State,
    enqueue: Callable[[str], None],
    *,
    finalize: Finalize,
    token: str,
    trigger: str,
    scheduled_for: datetime | None = None,
    missed: int = 0,
) -> Start:
    """Start one run of ``schedule`` now, unless its previous run is still active.

    ``token`` names this start (a Celery task id: a redelivered task is the same start);
    ``trigger`` says who asked (``beat``, ``manual``) in the records. A skipped start is
    returned (and recorded); a start that fails raises, once recorded as ``failed``.
    ``scheduled_for``: the cron time beat sent this start for (``missed`` earlier times
    folded into it): more than ``ON_TIME`` late it is a ``catch-up``, and more than the
    schedule's ``catch_up`` late it is skipped as missed.
    """
    records = state.schedule(schedule.name)
    late = _lateness(schedule, scheduled_for, missed)
    if late is not None:
        trigger, note = late
        if trigger == "skipped_missed":
            start = Start(schedule.name, "skipped_missed", utc_now(), "beat", reason=note,
                          scheduled_for=_iso(scheduled_for))
            records.record(start)
            return start
    if scheduled_for is not None and (records.started_for() or 0) >= scheduled_for.timestamp():
        # A redelivered start whose job was submitted (and may be over): never a second job.
        log.info("schedule %s: the run due at %s was started already", schedule.name, _iso(scheduled_for))
        return Start(schedule.name, "skipped_overlap", utc_now(), trigger, scheduled_for=_iso(scheduled_for),
                     reason="this time's run was started already")
    holder = records.acquire(token, lambda job_id: job_is_active(state, job_id))
    if holder is not None:
        start = dataclasses.replace(_skipped(schedule, holder, trigger, state), scheduled_for=_iso(scheduled_for))
        records.record(start)
        return start
    try:
        prepared = prepare_schedule(schedule, settings, state)
        changes = prepared.changes
        job_id = submit(prepared, state, enqueue, finalize=finalize, budget_usd=schedule.budget_usd,
                        schedule=schedule.name, notify_url=schedule.notify)
    except BaseException as exc:
        records.release(token)
        if isinstance(exc, Exception):
            records.record(Start(schedule.name, "failed", utc_now(), trigger, reason=_reason(exc)))
        raise
    records.hand_over(token, job_id)
    if scheduled_for is not None:
        records.mark_started(scheduled_for.timestamp())
    start = Start(schedule.name, "started", utc_now(), trigger, job_id=job_id, changes=changes,
                  reason=late[1] if late else "", scheduled_for=_iso(scheduled_for))
    records.record(start)
    return start


def _iso(moment: datetime | None) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds") if moment else ""


def _lateness(schedule: Schedule, scheduled_for: datetime | None, missed: int) -> tuple[str, str] | None:
    """None for an on-time (or manual) start; else (``catch-up`` or ``skipped_missed``, why)."""
    if scheduled_for is None:
        return None
    late = datetime.now(timezone.utc) - scheduled_for
    if late <= ON_TIME:
        return None
    local = scheduled_for.astimezone(schedule.tz).strftime("%Y-%m-%d %H:%M %Z")
    folded = f"; {missed} earlier missed time(s) folded into it" if missed else ""
    window = _duration(schedule.catch_up)
    if late > schedule.catch_up:
        return "skipped_missed", (f"the run due at {local} was missed (beat was not running) and is "
                                  f"{_duration(late)} late, past the catch_up window of {window}{folded}")
    return "catch-up", f"caught up {_duration(late)} late: the run due at {local} was missed{folded}"


def _duration(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class CronTime(NamedTuple):
    """A cron time of a schedule that beat should handle now."""

    at: datetime
    missed: int  # earlier cron times, since the last one handled, that this one stands for


def due_time(schedule: Schedule, state: State, now: datetime) -> CronTime | None:
    """The cron time of ``schedule`` to start now, if one passed since the last handled (see
    the module docstring); a schedule seen for the first time under its cron has missed
    nothing, and records its latest time as handled."""
    records = state.schedule(schedule.name)
    latest = schedule.last_run(now)
    handled = records.handled(schedule.cron_key)
    if handled is None:
        records.baseline(latest.timestamp(), schedule.cron_key)
        return None
    if latest.timestamp() <= handled:
        return None
    missed, moment = 0, schedule.next_run(datetime.fromtimestamp(handled, timezone.utc))
    while moment < latest and missed < MISSED_COUNTED:
        missed += 1
        moment = schedule.next_run(moment)
    return CronTime(latest, missed)


def claim_time(schedule: Schedule, state: State, due: CronTime) -> bool:
    """Take ``due`` for this beat: False when another beat (or an earlier tick) took it."""
    return state.schedule(schedule.name).claim(due.at.timestamp(), schedule.cron_key)


def _skipped(schedule: Schedule, holder: str, trigger: str, state: State) -> Start:
    if holder.startswith(STARTING) or not holder:
        return Start(schedule.name, "skipped_overlap", utc_now(), trigger,
                     reason="another start of this schedule is preparing its run")
    try:
        status = state.jobs.status(holder).status
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


def schedule_jobs(settings: Settings) -> State:
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: schedules keep their locks and records in the workers' Redis")
    return State.from_url(settings.redis_url)


def start_by_name(
    settings: Settings, name: str, enqueue: Callable[[str], None], *, finalize: Finalize, token: str, trigger: str,
    scheduled_for: datetime | None = None, missed: int = 0,
) -> Start:
    """Load the schedules file and start the schedule called ``name`` (``start_schedule``)."""
    state = schedule_jobs(settings)
    schedule = find_schedule(load_schedules(settings.schedules_file), name, settings.schedules_file)
    return start_schedule(schedule, settings, state, enqueue, finalize=finalize, token=token, trigger=trigger,
                          scheduled_for=scheduled_for, missed=missed)
