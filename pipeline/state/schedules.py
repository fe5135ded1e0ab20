"""Schedule state: a schedule's lock and the records of its starts.

``ep:schedule:<name>:lock`` holds the job id of the run in progress, or
``starting:<token>`` while a start prepares (expiring after ``START_TTL_S``, in case the
starter dies); every change to it is one compare-and-set script call
(``schedule_lock.lua``), so two triggers racing for it cannot both win. ``:last`` is the
last trigger's record (JSON) and ``:history`` the last ``HISTORY_LENGTH`` of them, newest
first. ``:slot`` is the last cron time beat handled (``schedule_slot.lua``): it only moves
forward, so a time is started once however many beats tick.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from . import keys
from .connection import Connection

log = logging.getLogger(__name__)

# A start that dies between taking the lock and submitting (a killed process) blocks its
# schedule this long at most; preparing a very large catalog takes minutes, not an hour.
START_TTL_S = 3600
HISTORY_LENGTH = 100
STARTING = "starting:"


class Record(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class ScheduleState:
    """A schedule's lock and records in Redis."""

    def __init__(self, conn: Connection, name: str):
        self._r = conn.redis
        self.name = name
        self._cas = conn.script("schedule_lock.lua")
        self._slot = conn.script("schedule_slot.lua")

    def key(self, part: str) -> str:
        return keys.schedule(self.name, part)

    def holder(self) -> str | None:
        return self._r.get(self.key("lock"))

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

    def handled(self, cron_key: str) -> float | None:
        """The last cron time (epoch seconds) beat handled under ``cron_key``, or None."""
        at, cron = self._r.hmget(self.key("slot"), "at", "cron")
        return float(at) if at is not None and cron == cron_key else None

    def baseline(self, at: float, cron_key: str) -> bool:
        """Record ``at`` as handled unless a time is already handled under ``cron_key``."""
        return bool(self._slot(keys=[self.key("slot")], args=[at, cron_key, "baseline"]))

    def claim(self, at: float, cron_key: str) -> bool:
        """Take the cron time ``at`` for this caller: False when it (or a later one) was
        handled already, by this beat or another."""
        return bool(self._slot(keys=[self.key("slot")], args=[at, cron_key, "claim"]))

    def started_for(self) -> float | None:
        """The latest cron time (epoch seconds) a start was submitted for, or None."""
        at = self._r.hget(self.key("slot"), "started")
        return float(at) if at is not None else None

    def mark_started(self, at: float) -> None:
        """A job was submitted for the cron time ``at`` (a redelivered start finds it)."""
        self._r.hset(self.key("slot"), "started", at)

    def record(self, start: Record) -> None:
        line = json.dumps(start.to_dict(), separators=(",", ":"))
        pipe = self._r.pipeline(transaction=True)
        pipe.set(self.key("last"), line)
        pipe.lpush(self.key("history"), line)
        pipe.ltrim(self.key("history"), 0, HISTORY_LENGTH - 1)
        pipe.execute()

    def last(self) -> dict[str, Any] | None:
        raw = self._r.get(self.key("last"))
        return json.loads(raw) if raw else None

    def history(self, limit: int = HISTORY_LENGTH) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._r.lrange(self.key("history"), 0, limit - 1)]
