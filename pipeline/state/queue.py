"""The queue of runs waiting to start (``FairQueue``) and the due index of predictions in
flight (``DueIndex``, whose members are ``Due``).

A due member's text is defined once, by ``Due.FORMAT``; the fair queue's pop script, which
writes a start check's member in the same step as it hands a run out, receives that format
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import keys
from .connection import Connection


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Due:
    """One prediction in the due index: ``job|index|attempt|failures|submitted_at|seen_at``.

    ``attempt`` -1 is a start check (``START``): the run was handed out to a pump and is not
    settled yet, or its start is to be tried again then (after a transient error, say, with
    its ``failures`` so far); whoever takes it due starts the run. ``seen_at`` is when the
    prediction was last seen still running (the submit, for a first check), so that a check
    made late (its poller died, say) still tells how long the prediction took; 0 when it
    was seen completed already (a check kept until the run is collected).
    """

    FORMAT = "%s|%d|%d|%d|%.3f|%.3f"  # also given to limits_fair_pop.lua, which formats one
    START = -1

    job_id: str
    index: int
    attempt: int
    failures: int
    submitted_at: float
    seen_at: float = 0.0

    @property
    def member(self) -> str:
        return self.FORMAT % (self.job_id, self.index, self.attempt, self.failures, self.submitted_at, self.seen_at)

    @classmethod
    def parse(cls, member: str) -> "Due":
        job_id, index, attempt, failures, submitted, seen = member.rsplit("|", 5)
        return cls(job_id, int(index), int(attempt), int(failures), float(submitted), float(seen))


class FairQueue:
    """Runs of several jobs, handed out in turn so that every job progresses.

    A job is registered with its number of runs; nothing is stored per run (a cursor per job),
    so a 100,000-run job costs a few hash fields. ``pop`` goes round the jobs that have runs
    left: the job whose turn it is gets ``priority`` runs in a row, then the next job; a
    100-run job pushed behind a 100,000-run job therefore gets every other run. Each index is
    handed out once, in order, unless ``requeue`` hands it out again (before the job's cursor).
    Every operation is one Lua script: concurrent poppers never get the same run.

    Keys: ``<key>:ring`` (job ids in turn order), ``<key>:jobs`` (cursor, count, priority of
    each job) and ``<key>:requeued``. A job stays known until ``remove`` (done: its job is
    finalized), so that a late ``requeue`` for a cancelled job is refused.

    Parameters:
      conn: the state layer's connection.
      key: the queue's key prefix.
    """

    def __init__(self, conn: Connection, key: str = keys.FAIR):
        self._r = conn.redis
        self.keys = keys.fair_queue(key)
        self._push = conn.script("limits_fair_push.lua")
        self._pop = conn.script("limits_fair_pop.lua")
        self._requeue = conn.script("limits_fair_requeue.lua")
        self._remove = conn.script("limits_fair_remove.lua")

    def push(self, job_id: str, count: int, priority: int = 1, *, handed_out: int = 0) -> bool:
        """Register runs ``0..count-1`` of ``job_id``, the first ``handed_out`` of them as
        handed out already (they come back only by ``requeue``); False (no change) if the job
        is known."""
        if count < 0 or priority < 1 or not 0 <= handed_out <= count:
            raise ValueError("FairQueue.push needs count >= 0, priority >= 1, 0 <= handed_out <= count")
        return self._push(keys=self.keys, args=[job_id, count, priority, handed_out]) == 1

    def pop(self) -> tuple[str, int] | None:
        """The next run as ``(job_id, index)``, or None when no job has runs left."""
        got = self._pop(keys=self.keys)
        if got is None:
            return None
        job_id, index = got
        return _text(job_id), int(index)

    def pop_marked(self, due: "DueIndex", due_in_s: float) -> tuple[str, int, str] | None:
        """Like ``pop``, and in the same atomic step add the run's start check
        (``Due(job, index, START, 0, now, now)``) to ``due``, due in ``due_in_s``: a popper that
        dies leaves the run findable. Returns ``(job_id, index, member)``."""
        got = self._pop(keys=[*self.keys, due.key], args=[due_in_s, Due.FORMAT, Due.START, 0])
        if got is None:
            return None
        job_id, index, member = got
        return _text(job_id), int(index), _text(member)

    def requeue(self, job_id: str, index: int) -> bool:
        """Hand run ``index`` out again; False if the job is gone, or the run is already queued."""
        return self._requeue(keys=self.keys, args=[job_id, index]) == 1

    def remove(self, job_id: str) -> bool:
        """Hand out no more runs of ``job_id`` and forget it; False if it was not known."""
        return self._remove(keys=self.keys, args=[job_id]) == 1

    def has_runs(self) -> bool:
        """Whether some job has runs left to hand out (or had, until a pop finds it empty)."""
        return bool(self._r.llen(self.keys[0]))


class DueIndex:
    """Predictions in flight, by next check time (a sorted set of ``Due`` members).

    ``take`` leases the due members it returns (pushes them ``lease_s`` into the future in the
    same step), so a poller that dies loses nothing: they come due again by themselves.
    ``schedule`` replaces members and returns the seconds until the earliest is due, in one
    step. Times are the Redis server's.
    """

    def __init__(self, conn: Connection, key: str = keys.DUE):
        self._r = conn.redis
        self.key = key
        self._take = conn.script("due_take.lua")
        self._put = conn.script("due_put.lua")

    def schedule(self, removed: list[str], added: list[tuple[str, float]]) -> float | None:
        """Replace members of the due index; returns seconds until the earliest is due."""
        args: list[str | float] = [len(removed), *removed]
        for member, delay in added:
            args += [member, max(0.0, delay)]
        left = float(self._put(keys=[self.key], args=args))
        return None if left < 0 else left

    def take(self, n: int, lease_s: float) -> list[Due]:
        return [Due.parse(_text(m)) for m in self._take(keys=[self.key], args=[n, lease_s])]

    def has_due(self) -> bool:
        return bool(self._r.zcard(self.key))
