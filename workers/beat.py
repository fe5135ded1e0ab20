"""Beat: ``celery -A workers beat`` starts the enabled schedules of the schedules file on time.

``Scheduler`` (made beat's scheduler here) reads the schedules file when beat starts:
restart beat after editing it. A broken file stops beat with every issue at its line;
workers never read it at import, so they are not affected. Without a file there are no
entries and beat idles. Each entry is a ``CronSchedule``: its own cron, in its own timezone.

Beat only sends ``editpipe.run_schedule(name, scheduled_for=…)``; the overlap lock and the
records are the task's (``pipeline.schedules.start_schedule``), in Redis, so they outlive beat.
Which cron time is due is decided from Redis too (``pipeline.schedules.due_time``), not from
beat's own schedule file: a time missed while beat was down is due once when it is back (the
task starts it if it is within the schedule's ``catch_up``, else records it as missed), and
each time is claimed in Redis before it is sent, so a second beat started by mistake sends
nothing twice.
"""

from __future__ import annotations

import heapq
import logging
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from celery.beat import Scheduler as BaseScheduler, event_t
from celery.schedules import BaseSchedule, schedstate

from pipeline.errors import ManifestError
from pipeline.schedules import CronTime, Schedule, claim_time, due_time, load_schedules, next_run
from pipeline.settings import Settings
from pipeline.state import State

from . import names
from .celery_app import app

log = logging.getLogger(__name__)
TASK = names.RUN_SCHEDULE
RETRY_S = 5.0  # how soon beat asks again when Redis did not answer


class CronSchedule(BaseSchedule):
    """Due at every time ``cron`` names in ``timezone`` (an IANA name).

    Given the last run, a time missed since is due once, not once per missed time. Beat's
    ``Scheduler`` asks Redis for the last time handled instead of its own record of it.
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


class Scheduler(BaseScheduler):
    """Beat's scheduler: the schedules file's entries, due by what Redis says was handled.

    Nothing is kept in beat's own file (``-s`` is accepted and unused): the last cron time
    each schedule handled is in Redis, shared by every beat (see the module docstring).
    """

    def setup_schedule(self) -> None:
        settings = Settings.from_env()
        path = settings.schedules_file
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
        self._schedules = {s.name: s for s in schedules if s.enabled}
        self._due: dict[str, CronTime] = {}
        self._store: State | None = None
        self._redis_url = settings.redis_url or self.app.conf.broker_url
        self._unreachable = False
        self.app.conf.beat_schedule = entries
        super().setup_schedule()

    def _state(self) -> State:
        if self._store is None:
            self._store = State.from_url(self._redis_url)
        return self._store

    def populate_heap(self, *_: Any) -> None:
        # Celery orders its heap by each entry's own idea of when it is next due, which for a
        # time missed before this beat started is its next cron time: ask ``is_due`` instead.
        self._heap = []
        for entry in self.schedule.values():
            due, wait_s = self.is_due(entry)
            self._heap.append(event_t(self._when(entry, 0 if due else wait_s) or 0, 5, entry))
        heapq.heapify(self._heap)

    def is_due(self, entry: Any) -> schedstate:
        schedule = self._schedules.get(entry.name)
        if schedule is None:
            return super().is_due(entry)
        now = datetime.now(timezone.utc)
        try:
            due = due_time(schedule, self._state(), now)
        except Exception as exc:  # noqa: BLE001 - Redis away: ask again shortly, say so once
            self._warn_unreachable(exc)
            return schedstate(False, RETRY_S)
        self._unreachable = False
        wait_s = (schedule.next_run(now) - now).total_seconds()
        if due is None:
            return schedstate(False, wait_s)
        self._due[entry.name] = due
        return schedstate(True, wait_s)

    def apply_async(self, entry: Any, producer: Any = None, advance: bool = True, **kwargs: Any) -> Any:
        schedule, due = self._schedules.get(entry.name), self._due.pop(entry.name, None)
        if schedule is None or due is None:
            return super().apply_async(entry, producer, advance, **kwargs)
        if not claim_time(schedule, self._state(), due):
            log.warning("schedule %s: its run due at %s was sent already (by another beat? run one beat only); "
                        "not sending it again", entry.name, due.at.isoformat())
            return None
        entry = self.reserve(entry) if advance else entry
        return self.send_task(entry.task, entry.args, {"scheduled_for": due.at.isoformat(), "missed": due.missed},
                              producer=producer, headers={"celery_beat_task": True})

    def _warn_unreachable(self, exc: Exception) -> None:
        if not self._unreachable:
            log.warning("beat cannot read the schedules' state in Redis (%s); asking again every %.0f s",
                        exc, RETRY_S)
        self._unreachable = True

    def install_default_entries(self, data: dict) -> None:
        # editpipe keeps no task results, so there is nothing for celery.backend_cleanup.
        return None


app.conf.beat_scheduler = f"{__name__}:Scheduler"
