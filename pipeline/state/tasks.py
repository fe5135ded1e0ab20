"""Task leases and kicks: which process runs a long-running task (a pump, the poller), and
which of them must be started again because work waits and nobody holds it.

A lease (``ep:lease:<name>``) holds the token of the task that runs ``name`` and expires by
itself, so a killed holder stops nothing for longer than its lease; only its holder extends
or removes it (``task_lease.lua``, one call each). A kick mark (``ep:kick:<name>``) says a
message starting ``name`` is on its way, so that many wake-ups send one message; it lives a
few seconds only, since the message it stands for may be lost with a dead worker.

``watch`` is the watchdog's question (``workers.watchdog``), in one round trip: work waiting
with no live lease holder (runs in the fair queue and a pump slot not held, predictions due
and the poller not held, a job whose last run finished long ago and is still not finalized).
It sets the kick marks of what it returns in the same step, so of a fleet's watchdogs one
sends each start.
"""

from __future__ import annotations

from dataclasses import dataclass

from . import keys
from .connection import Connection

FINALIZE = "finalize:"  # + job id: the kick mark of a job's finalize


@dataclass(frozen=True)
class Waiting:
    """What ``TaskLeases.watch`` found waiting without a taker (its kick marks are set)."""

    poller: bool
    pumps: list[int]
    finalize: list[str]


class TaskLeases:
    """Leases and kick marks of the long-running tasks: ``POLLER`` and ``pump(slot)``."""

    POLLER = "poller"

    @staticmethod
    def pump(slot: int) -> str:
        """The lease and kick name of pump ``slot``."""
        return f"pump:{slot}"

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._lease = conn.script("task_lease.lua")
        self._watch = conn.script("task_watch.lua")

    def lease(self, name: str, token: str, ttl_s: float) -> bool:
        """Take ``name``'s lease for ``token``, or extend it if ``token`` holds it already."""
        return self._lease(keys=[keys.task_lease(name)], args=["take", token, int(ttl_s * 1000)]) == 1

    def lease_left(self, name: str) -> float:
        """Seconds until ``name``'s lease expires (0.0 when nobody holds it)."""
        return max(0.0, self._r.pttl(keys.task_lease(name)) / 1000)

    def unlease(self, name: str, token: str) -> None:
        """Give ``name``'s lease up, if ``token`` still holds it."""
        self._lease(keys=[keys.task_lease(name)], args=["drop", token])

    def kick(self, name: str, ttl_s: float) -> bool:
        """Mark a start of ``name`` as on its way; False if one is already (for ``ttl_s``)."""
        return bool(self._r.set(keys.task_kick(name), 1, nx=True, px=int(ttl_s * 1000)))

    def kicked(self, name: str) -> None:
        """The kicked task has started: the next wake-up may send another."""
        self._r.delete(keys.task_kick(name))

    def watch(self, pumps: int, *, kick_s: float, due_within_s: float, finalize_after_s: float,
              finalize_kick_s: float, most: int = 20) -> Waiting:
        """What must be started, each marked as kicked for ``kick_s`` (a finalize for
        ``finalize_kick_s``) in the same step: the poller, if a prediction is due within
        ``due_within_s`` and its lease is not held; each of the ``pumps`` slots whose lease is
        not held, if runs wait in the fair queue; up to ``most`` jobs whose last run finished
        over ``finalize_after_s`` ago and that are still not finalized (their finalize was
        lost with a worker, or is queued behind other work: a second one is harmless)."""
        names = [self.POLLER, *(self.pump(slot) for slot in range(pumps))]
        poller, slots, jobs = self._watch(
            keys=[keys.fair_queue()[0], keys.DUE, keys.TO_FINALIZE,
                  *(key for name in names for key in (keys.task_lease(name), keys.task_kick(name)))],
            args=[int(kick_s * 1000), due_within_s, finalize_after_s, keys.task_kick(FINALIZE),
                  int(finalize_kick_s * 1000), most],
        )
        return Waiting(poller=poller == 1, pumps=[int(s) for s in slots], finalize=list(jobs))
