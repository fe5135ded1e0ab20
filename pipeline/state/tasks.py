"""Task leases and kicks: which process runs a long-running task (a pump, the poller).

A lease (``ep:lease:<name>``) holds the token of the task that runs ``name`` and expires by
itself, so a killed holder stops nothing for longer than its lease. A kick mark
(``ep:kick:<name>``) says a message starting ``name`` is on its way, so that many wake-ups
send one message.
"""

from __future__ import annotations

from . import keys
from .connection import Connection


class TaskLeases:
    """Leases and kick marks of the long-running tasks."""

    def __init__(self, conn: Connection):
        self._r = conn.redis

    def lease(self, name: str, token: str, ttl_s: float) -> bool:
        """Take ``name``'s lease for ``token``, or extend it if ``token`` holds it already."""
        key = keys.task_lease(name)
        if self._r.set(key, token, nx=True, px=int(ttl_s * 1000)):
            return True
        if self._r.get(key) == token:
            self._r.pexpire(key, int(ttl_s * 1000))
            return True
        return False

    def lease_left(self, name: str) -> float:
        """Seconds until ``name``'s lease expires (0.0 when nobody holds it)."""
        return max(0.0, self._r.pttl(keys.task_lease(name)) / 1000)

    def unlease(self, name: str, token: str) -> None:
        key = keys.task_lease(name)
        if self._r.get(key) == token:
            self._r.delete(key)

    def kick(self, name: str, ttl_s: float) -> bool:
        """Mark a start of ``name`` as on its way; False if one is already (for ``ttl_s``)."""
        return bool(self._r.set(keys.task_kick(name), 1, nx=True, px=int(ttl_s * 1000)))

    def kicked(self, name: str) -> None:
        """The kicked task has started: the next wake-up may send another."""
        self._r.delete(keys.task_kick(name))
