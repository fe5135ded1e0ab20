"""Beat: ``celery -A workers beat`` starts the enabled schedules of the schedules file on time.

``Scheduler`` (made beat's scheduler here) reads the schedules file when beat starts:
restart beat after editing it. A broken file stops beat with every issue at its line;
workers never read it at import, so they are not affected. Without a file there are no
entries and beat idles. Each entry is a ``CronSchedule``: its own cron, in its own timezone.

Beat only sends ``editpipe.run_schedule(name)``; the overlap lock and the records are the
task's (``pipeline.schedules.start_schedule``), in Redis, so they outlive beat.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from celery.beat import PersistentScheduler
from celery.schedules import BaseSchedule, schedstate

from pipeline.errors import ManifestError
from pipeline.schedules import Schedule, load_schedules, next_run
from pipeline.settings import Settings

from . import names
from .celery_app import app

log = logging.getLogger(__name__)
TASK = names.RUN_SCHEDULE


class CronSchedule(BaseSchedule):
    """Due at every time ``cron`` names in ``timezone`` (an IANA name).

    A time missed while beat was down (beat's record of the entry's last run is older than
    it) is due once when beat comes back, not once per missed time.
    """

    def __init__(self, cron: str, timezone_name: str, app: Any = None):
        super().__init__(app=app)
        self.cron = cron
        self.timezone = timezone_name
        self._tz = ZoneInfo(timezone_name)

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def next_after(self, moment: datetime) -> datetime:
        return next_run(self.cron, self._tz, _aware(moment))

    def remaining_estimate(self, last_run_at: datetime) -> timedelta:
        return self.next_after(last_run_at) - self.now()

    def is_due(self, last_run_at: datetime) -> schedstate:
        now = self.now()
        due_at = self.next_after(last_run_at)
        if due_at <= now:
            return schedstate(True, (self.next_after(now) - now).total_seconds())
        return schedstate(False, (due_at - now).total_seconds())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CronSchedule):
            return (self.cron, self.timezone) == (other.cron, other.timezone)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self):
        # Beat's database pickles entries: keep the app (and its connections) out of it.
        return self.__class__, (self.cron, self.timezone)

    def __repr__(self) -> str:
        return f"<cron {self.cron!r} {self.timezone}>"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def beat_entries(schedules: list[Schedule]) -> dict[str, dict[str, Any]]:
    """``beat_schedule`` entries for the enabled schedules, named after them."""
    return {
        s.name: {"task": TASK, "schedule": CronSchedule(s.cron, s.timezone), "args": (s.name,)}
        for s in schedules
        if s.enabled
    }


class Scheduler(PersistentScheduler):
    """Beat's persistent scheduler with the schedules file as its entries."""

    def setup_schedule(self) -> None:
        path = Settings.from_env().schedules_file
        try:
            schedules = load_schedules(path)
        except ManifestError as exc:
            for issue in exc.issues:
                log.error("%s", issue)
            raise
        if not path.exists():
            log.warning("no schedules file at %s: no schedules to run", path)
        entries = beat_entries(schedules)
        log.info("%d enabled schedule(s) of %d in %s: %s", len(entries), len(schedules), path,
                 ", ".join(f"{name} {e['schedule']!r}" for name, e in entries.items()) or "none")
        self.app.conf.beat_schedule = entries
        super().setup_schedule()

    def merge_inplace(self, b: dict[str, dict[str, Any]]) -> None:
        # An entry whose cron or timezone changed starts afresh: its last run under the old
        # cron must not make it due the moment beat restarts.
        for name, entry in b.items():
            stored = self.schedule.get(name)
            if stored is not None and stored.schedule != entry["schedule"]:
                del self.schedule[name]
        super().merge_inplace(b)

    def install_default_entries(self, data: dict) -> None:
        # editpipe keeps no task results, so there is nothing for celery.backend_cleanup.
        return None


app.conf.beat_scheduler = f"{__name__}:Scheduler"
