"""The Redis side of the account's limits (``pipeline.limits``): one backend behind the
``RateLimiter``, ``ConcurrencyLimiter``, ``Throttle`` and ``AccountLimits`` classes.

Every operation is one of the ``limits_*.lua`` scripts (with ``limits_lib.lua``'s helpers),
and every clock reading is the Redis server's ``TIME`` taken inside the script. Times and
durations cross this interface as integer microseconds; the key names are the callers'
(built with ``keys.limits`` and ``keys.limit_part``).
"""

from __future__ import annotations

from collections.abc import Iterable

from .connection import Connection

LIB = "limits_lib.lua"


class LimitsBackend:
    """The limits' scripts on one Redis connection."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._throttle = conn.script("limits_throttle.lua", LIB)
        self._rate = conn.script("limits_rate.lua", LIB)
        self._lease = conn.script("limits_lease.lua", LIB)
        self._start = conn.script("limits_start.lua", LIB, "metrics_lib.lua")

    @classmethod
    def from_url(cls, url: str) -> "LimitsBackend":
        return cls(Connection.from_url(url))

    # throttle
    def throttle_cut(self, key: str, recovery_us: int, pause_us: int, decrease: float, floor: float,
                     counts_key: str | None = None) -> int:
        """Record a 429 (counted in ``counts_key``, the account's counts, if given): returns the
        pause now in force (us)."""
        pause_us, _ = self._throttle(keys=[key] + ([counts_key] if counts_key else []),
                                     args=["cut", recovery_us, pause_us, repr(decrease), repr(floor)])
        return int(pause_us)

    def throttle_read(self, key: str, recovery_us: int) -> tuple[int, int]:
        """The pause left (us) and the rate factor (parts per million)."""
        pause_us, ppm = self._throttle(keys=[key], args=["read", recovery_us])
        return int(pause_us), int(ppm)

    # rate
    def rate_take(self, key: str, last_key: str, throttle_key: str | None, *, interval_us: float,
                  catch_up_us: float, recovery_us: int) -> int:
        """Take one start: 0 when granted now, else the microseconds to wait."""
        keys = [key, last_key] + ([throttle_key] if throttle_key is not None else [])
        return int(self._rate(keys=keys, args=[repr(interval_us), repr(catch_up_us), recovery_us]))

    # leases
    def lease_acquire(self, key: str, holder: str, limit: int, lease_us: int) -> bool:
        return self._lease(keys=[key], args=["acquire", holder, limit, lease_us]) == 1

    def lease_renew(self, key: str, lease_us: int, holders: Iterable[str]) -> int:
        return int(self._lease(keys=[key], args=["renew", lease_us, *holders]))

    def lease_count(self, key: str) -> int:
        return int(self._lease(keys=[key], args=["count"]))

    def lease_release(self, key: str, holder: str) -> None:
        self._r.zrem(key, holder)

    # both
    def start(self, *, rate_key: str, last_key: str, lease_key: str, throttle_key: str, holder: str,
              limit: int, lease_us: int, interval_us: float, catch_up_us: float, recovery_us: int,
              busy_retry_us: int, counts_key: str | None = None) -> int:
        """A lease and a rate token, both or neither: 0 when taken, else microseconds to wait.
        A start taken is counted in ``counts_key`` (the account's counts), if given."""
        return int(self._start(
            keys=[rate_key, lease_key, throttle_key, last_key] + ([counts_key] if counts_key else []),
            args=[holder, limit, lease_us, repr(interval_us), repr(catch_up_us), recovery_us, busy_retry_us],
        ))
