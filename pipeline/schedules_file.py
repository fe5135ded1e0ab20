"""The schedules file: manifests to run on a cron (manifest.md, "Schedules").

``load_schedules`` reads the schedules file (``configs/schedules.yaml`` or the file
``EDITPIPE_SCHEDULES`` names) and either returns every ``Schedule`` or raises
``SchedulesFileError`` with every issue as ``file:line:col: field: message``, the way a
manifest's issues read (it is read with the manifest's line-keeping reader). A missing file
is no schedules. ``next_run`` says when a cron fires next in a schedule's timezone.

Domain layer: imports ``errors`` and the manifest's reader and field types only; starting a
schedule's run is ``pipeline.schedules``.
"""

from __future__ import annotations

import difflib
import re
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlparse

import yaml
from croniter import CroniterError, croniter
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, ValidationError

from .errors import EditpipeError, ManifestIssue, SchedulesFileError
from .manifest import Locations, Money, NonEmptyText, Text, as_text, as_value, pydantic_issue, read_yaml
from .manifest.publish import PublishDoc, PublishSpec, resolve_publish

CRON_FIELDS = "minute hour day-of-month month day-of-week"
CRON_ALIASES = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
# A time missed while beat was down still runs when beat is back within this long after it.
DEFAULT_CATCH_UP = timedelta(hours=6)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Schedule:
    """One entry of the schedules file, validated.

    ``manifest`` is an ``s3://`` URI or an absolute path (a relative one is taken from the
    schedules file's folder); ``file``/``line``/``col`` locate the entry's ``manifest`` value,
    so that a manifest missing at run time is reported where it was written.
    ``catch_up``: how late a start missed while beat was down may still be made (0: never).
    ``publish``: the schedule's own publish block, used instead of its manifest's.
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
    catch_up: timedelta = DEFAULT_CATCH_UP
    # Where its jobs' approved outputs go (replacing the manifest's own publish block), and
    # where that was written (line, column), for an issue found once the manifest is read.
    publish: PublishSpec | None = None
    publish_at: tuple[int, int] = (0, 0)

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def next_run(self, after: datetime) -> datetime:
        """The first time strictly after ``after`` (aware) that the cron names, in the
        schedule's timezone (a time a DST change skips runs at the first one after it)."""
        return next_run(self.cron, self.tz, after)

    def last_run(self, at: datetime) -> datetime:
        """The last time at or before ``at`` (aware) that the cron names."""
        return last_run(self.cron, self.tz, at)

    @property
    def cron_key(self) -> str:
        """What the times of this schedule depend on: a changed cron or timezone starts afresh."""
        return f"{self.cron}|{self.timezone}"

    def issue(self, message: str) -> ManifestIssue:
        return ManifestIssue(self.file, self.line, self.col, "manifest", message)

    def publish_issue(self, message: str) -> ManifestIssue:
        line, col = self.publish_at
        return ManifestIssue(self.file, line, col, f"schedules[{self.name}].publish.to", message)


def next_run(cron: str, tz: zoneinfo.ZoneInfo, after: datetime) -> datetime:
    """The first time strictly after ``after`` (aware) that ``cron`` names, in ``tz``."""
    return croniter(cron, after.astimezone(tz)).get_next(datetime)


def last_run(cron: str, tz: zoneinfo.ZoneInfo, at: datetime) -> datetime:
    """The last time at or before ``at`` (aware) that ``cron`` names, in ``tz``."""
    return croniter(cron, (at + timedelta(microseconds=1)).astimezone(tz)).get_prev(datetime)


def parse_duration(text: str) -> timedelta | None:
    """``90s``, ``30m``, ``6h``, ``2d`` or a number of seconds; None if it is none of these."""
    match = _DURATION.match(text)
    if match is None:
        return None
    return timedelta(seconds=int(match.group(1)) * _UNIT_S[match.group(2)])


_NAME = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]+$"), BeforeValidator(as_text)]
_BOOL = Annotated[StrictBool, BeforeValidator(as_value)]


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
    catch_up: Text | None = None
    publish: PublishDoc | None = None


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
    data, locations, issues = read_yaml(text, filename)
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
    text = {k: v for k, v in ((k, as_text(v)) for k, v in entry.items()) if k not in broken and isinstance(v, str)}
    checks = {
        "cron": _cron_problem,
        "timezone": _timezone_problem,
        "manifest": lambda ref: _manifest_ref(ref, base_dir)[1],
        "notify": lambda url: None if re.match(r"^https?://[^/\s]+", url) else "must be an http:// or https:// URL",
        "catch_up": lambda text: None if parse_duration(text) is not None
        else f"{text!r} is not a duration: a number with s, m, h or d (6h, 30m, 2d; 0 never catches up)",
    }
    for name, check in checks.items():
        if name in text and (problem := check(text[name])):
            issues.append(locations.issue(path + (name,), problem))
    if doc is None or len(issues) > found:
        return None
    manifest = _manifest_ref(doc.manifest, base_dir)[0]
    line, col = locations.at(path + ("manifest",))
    publish = None
    if doc.publish is not None:
        publish, problem = resolve_publish(doc.publish, base_dir)
        if problem:
            issues.append(locations.issue(path + ("publish", "to"), problem))
            return None
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
        catch_up=DEFAULT_CATCH_UP if doc.catch_up is None else parse_duration(doc.catch_up) or timedelta(0),
        publish=publish,
        publish_at=locations.at(path + ("publish", "to")),
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
    return pydantic_issue(error, locations)


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
        parsed = urlparse(ref)
        bucket, key = parsed.netloc, parsed.path.lstrip("/")
        if not bucket or not key or key.endswith("/"):
            return ref, f"{ref!r} does not name an object (s3://bucket/path/manifest.yaml)"
        return ref, None
    if re.match(r"^[a-z][a-z0-9+.-]*://", ref, re.IGNORECASE):
        return ref, "a schedule's manifest is a local path or an s3:// URI"
    return str((base_dir / ref).resolve()), None


def find_schedule(schedules: Iterable[Schedule], name: str, path: Path) -> Schedule:
    """The schedule called ``name`` (``path`` names the file in the error when none is)."""
    by_name = {s.name: s for s in schedules}
    if name in by_name:
        return by_name[name]
    known = ", ".join(sorted(by_name)) or "none"
    raise EditpipeError(f"no schedule named {name!r} in {path} (known: {known})")
