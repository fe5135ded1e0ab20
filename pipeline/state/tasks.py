"""Task leases and kicks: which process runs a long-running task (a pump, the poller).

A lease (``ep:lease:<name>``) holds the token of the task that runs ``name`` and expires by
itself, so a killed holder stops nothing for longer than its lease; only its holder extends
or removes it (``task_lease.lua``, one call each). A kick mark (``ep:kick:<name>``) says a
message starting ``name`` is on its way, so that many wake-ups send one message.
"""

from __future__ import annotations

from . import keys
from .connection import Connection


class TaskLeases:
    """Leases and kick marks of the long-running tasks."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._lease = conn.script("task_lease.lua")

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
