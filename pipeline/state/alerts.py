"""Budget alerts: claimed once where spend is recorded, then held in an outbox until sent.

Claiming: the charge of a reserved run (``runs.finish_run``, ``budget.charge_unconfirmed``)
claims, in its own atomic step, each threshold (50, 80, 100 % of the budget) that it brings
the job's budget (or its schedule's: the job's record says which applies, ``budget_of``) and
the UTC day's budget to (``lua/alerts_lib.lua``): one HSETNX per budget and threshold, in
the job's ``ep:job:<id>:alerts`` or the day's ``ep:budget:day:<day>:spend``. A redelivered
task finds its run finished and charges nothing, so no threshold is ever claimed twice, by
any number of workers.

Each claim puts one alert in the outbox (``ep:alerts``, record by alert id) and its id in the
due set (``ep:alerts:due``). A sender ``take``s due alerts for a while (``hold_s``; another
sender takes an alert again only once that hold lapses, i.e. its sender died), and says
``done`` with each, which moves it to the history list (``ep:alerts:history``, the newest
``HISTORY_LENGTH``).

Not covered: a charge rebuilt from storage after Redis lost a job (``recovery``) held no
reservation and claims nothing; the claims Redis lost go with it, so a rebuilt job that
spends more may alert a threshold again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from . import keys
from .connection import Connection

HISTORY_LENGTH = 1000
THRESHOLDS = (50, 80, 100)  # as in lua/alerts_lib.lua


@dataclass(frozen=True)
class AlertRecord:
    """One claimed alert, as the outbox holds it (amounts in micro-USD).

    ``budget``: ``job``, ``schedule`` or ``day``; ``id``: the job id, the schedule's name or
    the day (YYYY-MM-DD); ``job_id``: the job whose charge crossed the threshold;
    ``notify_url``: that job's ``notify`` URL ('' when none); ``takes``: how many senders
    have taken it, this one included."""

    alert_id: str
    budget: str
    id: str
    job_id: str
    threshold: int
    budget_micros: int
    spent_micros: int
    notify_url: str
    claimed_ms: int
    takes: int

    @classmethod
    def from_json(cls, raw: str) -> "AlertRecord":
        d = json.loads(raw)
        return cls(alert_id=d["alert_id"], budget=d["budget"], id=d["id"], job_id=d.get("job_id") or "",
                   threshold=int(d["threshold"]), budget_micros=int(d["budget_micros"]),
                   spent_micros=int(d["spent_micros"]), notify_url=d.get("notify_url") or "",
                   claimed_ms=int(d["claimed_ms"]), takes=int(d.get("takes") or 0))


class Alerts:
    """The outbox of budget alerts: what is due, taken by one sender at a time, and done."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._take = conn.script("alerts_take.lua")
        self._done = conn.script("alerts_done.lua")
        self._kick = conn.script("alerts_kick.lua")

    def kick_sender(self, kick: str, kick_s: float) -> bool:
        """True when an alert waits for a sender (none, or a dead one, holds it) and no
        sender was kicked within ``kick_s``; the kick mark ``kick`` (``TaskLeases.kick``'s)
        is set in the same step, so a fleet's watchdogs send one sender."""
        return bool(self._kick(keys=[keys.ALERTS_DUE, keys.task_kick(kick)], args=[int(kick_s * 1000)]))

    def take(self, hold_s: float, most: int = 20) -> list[AlertRecord]:
        """Up to ``most`` due alerts, held for this caller for ``hold_s``: longer than the
        caller takes to send them, so that only a dead sender's alerts are taken again."""
        raw = self._take(keys=[keys.ALERTS, keys.ALERTS_DUE], args=[int(hold_s * 1000), most])
        return [AlertRecord.from_json(item) for item in raw]

    def done(self, alert_id: str, outcome: str) -> bool:
        """The alert leaves the outbox for the history, with ``outcome`` (``delivered``,
        ``failed``, ``no_url``, …); False when another sender was done with it first."""
        return bool(self._done(keys=[keys.ALERTS, keys.ALERTS_DUE, keys.ALERTS_HISTORY],
                               args=[alert_id, outcome, HISTORY_LENGTH]))

    def pending(self) -> list[AlertRecord]:
        """Every alert in the outbox (claimed, not yet done with)."""
        return [AlertRecord.from_json(raw) for raw in self._r.hvals(keys.ALERTS)]

    def history(self, limit: int = HISTORY_LENGTH) -> list[dict]:
        """The newest alerts done with, newest first, each with its ``outcome``."""
        return [json.loads(raw) for raw in self._r.lrange(keys.ALERTS_HISTORY, 0, limit - 1)]

