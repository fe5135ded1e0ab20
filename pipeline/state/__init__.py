"""The state layer: the only code that holds a Redis client, knows a key name or loads a
Lua script.

It owns ``keys`` (every key name), ``connection`` (the client and the script loader, each
script once per client, shared helpers from ``lua/*_lib.lua``) and one small store per noun,
each saying what it guarantees: ``Jobs`` (job records), ``Runs`` (a run's claims, marks,
results and ledger lines), ``Budget``, ``FairQueue`` and ``DueIndex``, ``TaskLeases``,
``Uploads``, ``Latency``, ``IndexPending``, ``ScheduleState``, ``WebhookEvents``, ``Alerts``
(the outbox of budget alerts, claimed where spend is recorded), the limits'
``LimitsBackend``, ``Takeover`` (what a dead embedded run held), ``LostSubmits``
(submits on the wire or whose answer was lost, and the prediction ids runs know) and
``Metrics`` (the fleet's counters and histograms, and the snapshot the metrics show). It may
import the domain (plan, ledger, errors) and nothing above it.

``State.from_url(url)`` opens one connection and exposes the stores on it. The connection
rides out a Redis outage of up to ``RIDE_OUT_S`` (``connection``); past it, the error raised
is one of ``UNAVAILABLE``, which callers catch without importing redis.
"""

from __future__ import annotations

from collections.abc import Callable

from .alerts import AlertRecord, Alerts
from .budget import Budget
from .connection import RIDE_OUT_S, UNAVAILABLE, Connection, flush, wait_until_up
from .jobs import ACTIVE, BUDGET_EXHAUSTED, FINISHED_TTL_S, Jobs, JobStatus, new_job_id
from .latency import Latency
from .limits import LimitsBackend
from .lost_submits import LostSubmits
from .metrics import Metrics, Snapshot
from .queue import Due, DueIndex, FairQueue
from .run_index import IndexPending
from .runs import Finished, Runs, RunState, StartClaim
from .schedules import ScheduleState
from .takeover import Released, Takeover
from .tasks import TaskLeases
from .uploads import Uploads
from .webhook_events import WebhookEvents

__all__ = [
    "ACTIVE", "AlertRecord", "Alerts", "BUDGET_EXHAUSTED", "FINISHED_TTL_S", "RIDE_OUT_S", "UNAVAILABLE", "Budget",
    "Connection", "Due", "DueIndex", "FairQueue", "Finished", "IndexPending", "JobStatus", "Jobs", "Latency",
    "LimitsBackend", "LostSubmits", "Metrics", "Released", "RunState", "Runs", "ScheduleState", "Snapshot",
    "StartClaim", "State", "Takeover", "TaskLeases", "Uploads", "flush",
    "new_job_id", "wait_until_up",
]


class State:
    """Every store on one Redis connection (one per process: scripts are loaded once)."""

    def __init__(self, conn: Connection):
        self._conn = conn
        self.jobs = Jobs(conn)
        self.runs = Runs(conn)
        self.budget = Budget(conn)
        self.fair = FairQueue(conn)
        self.due = DueIndex(conn)
        self.tasks = TaskLeases(conn)
        self.uploads = Uploads(conn)
        self.latency = Latency(conn)
        self.index = IndexPending(conn)
        self.limits = LimitsBackend(conn)
        self.takeover = Takeover(conn)
        self.webhook_events = WebhookEvents(conn)
        self.lost = LostSubmits(conn)
        self.alerts = Alerts(conn)
        self.metrics = Metrics(conn)

    @classmethod
    def from_url(cls, url: str, report: Callable[[str], None] | None = None,
                 ride_out_s: float = RIDE_OUT_S) -> "State":
        """The stores on one connection that rides out a Redis outage of up to ``ride_out_s``
        (``connection``; a reader that must answer at once, like the metrics server, asks for
        less); ``report`` gets its messages that Redis stopped and started answering (the
        log by default)."""
        return cls(Connection.from_url(url, report, ride_out_s))

    def memory_used(self) -> int:
        """What Redis holds in all, in bytes (``INFO memory``'s ``used_memory``)."""
        return int(self._conn.redis.info("memory")["used_memory"])

    def schedule(self, name: str) -> ScheduleState:
        return ScheduleState(self._conn, name)

    def finalized(self, job_id: str, keep_s: int = FINISHED_TTL_S) -> None:
        """The job's records are written: it leaves the to-finalize list and the fair queue
        (whose entry only refused late requeues; a resume registers the job again), and
        everything Redis holds for it expires in ``keep_s`` seconds (0: never), storage
        being its record from then on (``Jobs.expire``)."""
        self.jobs.finalized(job_id)
        self.fair.remove(job_id)
        if keep_s > 0:
            self.jobs.expire(job_id, keep_s)
