"""Schedules: manifests run on a cron, each start guarded against overlap (manifest.md,
"Schedules").

- ``load_schedules`` reads the schedules file (``configs/schedules.yaml`` or the file
  ``EDITPIPE_SCHEDULES`` names) and either returns every ``Schedule`` or raises
  ``SchedulesFileError`` with every issue as ``file:line:col: field: message``, the way a
  manifest's issues read. A missing file is no schedules.
- ``start_schedule`` starts one run: prepare (incremental: runs already done are skipped at
  $0) and submit with the schedule's budget, name and webhook. A schedule never starts while
  its previous run is active: its lock in Redis (``ScheduleState``) holds the job
  id of the run in progress, so it outlives a restart of beat; a start that finds it held by
  an active job is skipped and recorded, and a lock left by a finished job is taken over.
- Every start, skipped or failed one is recorded (``ScheduleState``): the last one for
  ``editpipe schedules``, and a capped history.
- A start records how many of its runs are new, changed or unchanged (``submission``
  finds them in the output root's index of done runs).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import posixpath
import re
import tempfile
import zoneinfo
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from botocore.exceptions import BotoCoreError, ClientError
from croniter import CroniterError, croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from .errors import EditpipeError, ManifestError, ManifestIssue, SettingsError
from .ledger import utc_now
from .manifest import Locations, Money, NonEmptyText, Text, _as_text, _as_value, _pydantic_issue, _read_yaml
from .settings import Settings
from .state import ScheduleState as ScheduleState, State
from .state.schedules import STARTING
from .storage import parse_s3_uri, s3_client
from .submission import Prepared, RunChanges, prepare, submit

log = logging.getLogger(__name__)

CRON_FIELDS = "minute hour day-of-month month day-of-week"
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

Outcome = Literal["started", "skipped_overlap", "failed"]


class SchedulesFileError(ManifestError):
    """The schedules file cannot be used, or a schedule's manifest cannot be found; every
    issue is located in the schedules file. A ``ManifestError``, so every command prints it
    (and exits) the way it does a manifest's issues."""


# --- The schedules file --------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """One entry of the schedules file, validated.

    ``manifest`` is an ``s3://`` URI or an absolute path (a relative one is taken from the
    schedules file's folder); ``file``/``line``/``col`` locate the entry's ``manifest`` value,
    so that a manifest missing at run time is reported where it was written.
    """

    name: str
    cron: str
    timezone: str
    manifest: str
    budget_usd: Decimal | None
    enabled: bool
    notify: str
    file: str
    line: int
    col: int

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def next_run(self, after: datetime) -> datetime:
        """The first time strictly after ``after`` (aware) that the cron names, in the
        schedule's timezone (a time a DST change skips runs at the first one after it)."""
        return next_run(self.cron, self.tz, after)

    def issue(self, message: str) -> ManifestIssue:
        return ManifestIssue(self.file, self.line, self.col, "manifest", message)


def next_run(cron: str, tz: zoneinfo.ZoneInfo, after: datetime) -> datetime:
    return croniter(cron, after.astimezone(tz)).get_next(datetime)


_NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$"), BeforeValidator(_as_text)]
_BOOL = Annotated[StrictBool, BeforeValidator(_as_value)]


class ScheduleDoc(BaseModel):
    """One schedule as written (see manifest.md)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: _NAME
    cron: NonEmptyText
    timezone: NonEmptyText = "UTC"
    manifest: NonEmptyText
    budget_usd: Money | None = None
    enabled: _BOOL = True
    notify: Text | None = None


_VOCABULARY = sorted(ScheduleDoc.model_fields)


def load_schedules(path: Path) -> list[Schedule]:
    """The schedules in ``path`` (none when the file does not exist). Raises
    ``SchedulesFileError`` with every issue found."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise SchedulesFileError([ManifestIssue(str(path), 1, 1, "schedules", f"cannot read the schedules file: {exc}")]) from None
    return parse_schedules(text, str(path), Path(path).resolve().parent)


def parse_schedules(text: str, filename: str, base_dir: Path) -> list[Schedule]:
    """Validate schedules file text; relative manifest paths resolve against ``base_dir``."""
    if _is_empty(text):
        return []
    data, locations, issues = _read_yaml(text, filename)
    schedules: list[Schedule] = []
    if data is not None:
        entries = _entries(data, locations, issues)
        first_line: dict[str, int] = {}
        for i, entry in enumerate(entries):
            schedule = _schedule(entry, i, locations, issues, base_dir)
            if schedule is None:
                continue
            if schedule.name in first_line:
                issues.append(locations.issue(
                    ("schedules", i, "name"),
                    f"duplicate schedule name {schedule.name!r} (first at line {first_line[schedule.name]})",
                ))
                continue
            first_line[schedule.name] = locations.at(("schedules", i, "name"))[0]
            schedules.append(schedule)
    if issues:
        raise SchedulesFileError(sorted(issues, key=lambda issue: (issue.line, issue.col)))
    return schedules


def _is_empty(text: str) -> bool:
    try:
        return yaml.safe_load(text) is None
    except yaml.YAMLError:
        return False  # reported, located, by the reader


def _entries(data: Any, locations: Locations, issues: list[ManifestIssue]) -> list[Any]:
    if not isinstance(data, dict):
        issues.append(locations.issue((), "must be a mapping with a `schedules:` list"))
        return []
    for key in data:
        if key != "schedules":
            issues.append(locations.issue((key,), f"unknown key {key!r} (the file holds `schedules:`)", key=True))
    entries = data.get("schedules")
    if entries is None:
        return []
    if not isinstance(entries, list):
        issues.append(locations.issue(("schedules",), "must be a list"))
        return []
    return entries


def _schedule(
    entry: Any, i: int, locations: Locations, issues: list[ManifestIssue], base_dir: Path
) -> Schedule | None:
    path = ("schedules", i)
    if not isinstance(entry, dict):
        issues.append(locations.issue(path, "must be a mapping (name, cron, timezone, manifest…)"))
        return None
    found = len(issues)
    doc: ScheduleDoc | None = None
    broken: set[str | int] = set()
    try:
        doc = ScheduleDoc.model_validate(entry)
    except ValidationError as exc:
        issues.extend(_doc_issue(error, path, locations) for error in exc.errors())
        broken = {error["loc"][0] for error in exc.errors() if error["loc"]}
    # Fields pydantic found fine are still checked for meaning: every issue at once.
    text = {k: v for k, v in ((k, _as_text(v)) for k, v in entry.items()) if k not in broken and isinstance(v, str)}
    checks = {
        "cron": _cron_problem,
        "timezone": _timezone_problem,
        "manifest": lambda ref: _manifest_ref(ref, base_dir)[1],
        "notify": lambda url: None if re.match(r"^https?://[^/\s]+", url) else "must be an http:// or https:// URL",
    }
    for name, check in checks.items():
        if name in text and (problem := check(text[name])):
            issues.append(locations.issue(path + (name,), problem))
    if doc is None or len(issues) > found:
        return None
    manifest = _manifest_ref(doc.manifest, base_dir)[0]
    line, col = locations.at(path + ("manifest",))
    return Schedule(
        name=doc.name,
        cron=doc.cron.strip(),
        timezone=doc.timezone,
        manifest=manifest,
        budget_usd=doc.budget_usd,
        enabled=doc.enabled,
        notify=doc.notify or "",
        file=locations.file,
        line=line,
        col=col,
    )


def _doc_issue(error: Mapping[str, Any], path: tuple, locations: Locations) -> ManifestIssue:
    error = {**error, "loc": path + tuple(error["loc"])}
    if error["type"] in ("bool_type", "bool_parsing"):
        return locations.issue(error["loc"], "must be true or false")
    if error["type"] == "extra_forbidden":
        name = str(error["loc"][-1])
        close = difflib.get_close_matches(name, _VOCABULARY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(_VOCABULARY)})"
        return locations.issue(error["loc"], f"unknown key {name!r}{hint}", key=True)
    return _pydantic_issue(error, locations)


def _cron_problem(cron: str) -> str | None:
    cron = cron.strip()
    if cron.startswith("@"):
        return None if cron in CRON_ALIASES else f"{cron!r} is not one of {', '.join(CRON_ALIASES)}"
    fields = cron.split()
    if len(fields) != 5:
        return f"a cron expression has 5 fields ({CRON_FIELDS}), {cron!r} has {len(fields)}"
    try:
        croniter(cron)
    except (CroniterError, ValueError) as exc:
        return f"{cron!r} is not a valid cron expression ({CRON_FIELDS}): {exc}"
    return None


def _timezone_problem(name: str) -> str | None:
    try:
        zoneinfo.ZoneInfo(name)
        return None
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = difflib.get_close_matches(name, zoneinfo.available_timezones(), n=1)
        return f"unknown timezone {name!r}" + (
            f" (did you mean {close[0]!r}?)" if close else " (an IANA name such as Europe/Paris, or UTC)"
        )


def _manifest_ref(ref: str, base_dir: Path) -> tuple[str, str | None]:
    if ref.startswith("s3://"):
        try:
            bucket, key = parse_s3_uri(ref)
        except (ValueError, EditpipeError):
            bucket, key = "", ""
        if not bucket or not key or key.endswith("/"):
            return ref, f"{ref!r} does not name an object (s3://bucket/path/manifest.yaml)"
        return ref, None
    if re.match(r"^[a-z][a-z0-9+.-]*://", ref, re.IGNORECASE):
        return ref, "a schedule's manifest is a local path or an s3:// URI"
    return str((base_dir / ref).resolve()), None


def find_schedule(schedules: Iterable[Schedule], name: str, path: Path) -> Schedule:
    by_name = {s.name: s for s in schedules}
    if name in by_name:
        return by_name[name]
    known = ", ".join(sorted(by_name)) or "none"
    raise EditpipeError(f"no schedule named {name!r} in {path} (known: {known})")


# --- Incremental counts --------------------------------------------------------------------


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
        return prepare(path, settings, state=state)
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
    state: State,
    enqueue: Callable[[str], None],
    *,
    token: str,
    trigger: str,
) -> Start:
    """Start one run of ``schedule`` now, unless its previous run is still active.

    ``token`` names this start (a Celery task id: a redelivered task is the same start);
    ``trigger`` says who asked (``beat``, ``manual``) in the records. A skipped start is
    returned (and recorded); a start that fails raises, once recorded as ``failed``.
    """
    records = state.schedule(schedule.name)
    holder = records.acquire(token, lambda job_id: job_is_active(state, job_id))
    if holder is not None:
        start = _skipped(schedule, holder, trigger, state)
        records.record(start)
        return start
    try:
        prepared = prepare_schedule(schedule, settings, state)
        changes = prepared.changes
        job_id = submit(prepared, state, enqueue, budget_usd=schedule.budget_usd, schedule=schedule.name,
                        notify_url=schedule.notify)
    except BaseException as exc:
        records.release(token)
        if isinstance(exc, Exception):
            records.record(Start(schedule.name, "failed", utc_now(), trigger, reason=_reason(exc)))
        raise
    records.hand_over(token, job_id)
    start = Start(schedule.name, "started", utc_now(), trigger, job_id=job_id, changes=changes)
    records.record(start)
    return start


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
    settings: Settings, name: str, enqueue: Callable[[str], None], *, token: str, trigger: str
) -> Start:
    """Load the schedules file and start the schedule called ``name`` (``start_schedule``)."""
    state = schedule_jobs(settings)
    schedule = find_schedule(load_schedules(settings.schedules_file), name, settings.schedules_file)
    return start_schedule(schedule, settings, state, enqueue, token=token, trigger=trigger)
