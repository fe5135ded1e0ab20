"""Budget: a run's price held against its job's budget and the day's, before it is paid.

Per job, the reservations hash (``ep:job:<id>:reserved``: run index -> ``micros|day``) and
the job's ``held_micros`` (spent + reserved) and ``budget_micros``; per UTC day, a counter of
the micro-USD held that day by every job together (``ep:budget:day:<YYYY-MM-DD>``), and a hash
of what was charged that day and the cap it was held against (``…:spend``, for the budget
alerts: ``alerts``).

Guaranteed: a reservation is taken against every budget that applies or none (one script);
a run holds at most one (a redelivered reserve is a no-op); a release gives it back at most
once; a charge turns it into spend (``runs.finish_run``, ``charge_unconfirmed``), so the
budgets are never passed by runs started under them; the same step claims the budget alerts
the charge crosses (``lua/alerts_lib.lua``).
"""

from __future__ import annotations

import json
from decimal import Decimal

from ..ledger import to_micros
from . import keys
from .connection import Connection
from .metrics import utc_day


class Budget:
    """Reservations against the job's and the day's budgets, and unconfirmed charges."""

    def __init__(self, conn: Connection):
        self._reserve = conn.script("budget_reserve.lua")
        self._release = conn.script("budget_release.lua", "budget_lib.lua")
        self._unconfirmed = conn.script("charge_unconfirmed.lua", "budget_lib.lua", "alerts_lib.lua")

    def reserve(self, job_id: str, index: int, price: Decimal, *, day: str, day_cap: Decimal | None) -> int:
        """Hold a run's price against the job's and the day's budget before it is submitted.
        Returns 1 when held, -1 when the job's budget is used up, -2 when the day's is."""
        return int(
            self._reserve(
                keys=[keys.job(job_id), keys.job(job_id, "reserved"), keys.day_budget(day), keys.day_spend(day)],
                args=[index, to_micros(price), "" if day_cap is None else to_micros(day_cap), day],
            )
        )

    def release(self, job_id: str, index: int) -> None:
        """Give a run's reservation back: its call was not billed. Safe to repeat."""
        self._release(keys=[keys.job(job_id), keys.job(job_id, "reserved")], args=[index, keys.DAY_BUDGET_PREFIX])

    def charge_unconfirmed(self, job_id: str, index: int, entry_id: str, line: dict, cost_micros: int) -> bool:
        """Charge a submit whose answer was lost, once per ``entry_id``."""
        return bool(
            self._unconfirmed(
                keys=[keys.job(job_id), keys.job(job_id, "ledger"), keys.job(job_id, "reserved"), keys.METRICS,
                      keys.job(job_id, "alerts"), keys.ALERTS, keys.ALERTS_DUE],
                args=[index, entry_id, json.dumps(line, separators=(",", ":")), cost_micros, utc_day(),
                      keys.DAY_BUDGET_PREFIX, keys.DAY_SPEND_SUFFIX],
            )
        )
