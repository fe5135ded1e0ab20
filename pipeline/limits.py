"""Limits: the provider account's limits, held for every worker on every machine at once.

The provider counts images started per minute and predictions in flight per account (per API
key), so a per-process limit (Celery's ``rate_limit``) overshoots by the number of workers.
Here every limit is state in Redis, changed only by the state layer's ``LimitsBackend`` (one
Lua script per operation), and every clock reading is the Redis server's ``TIME`` taken
inside the script: workers whose own clocks disagree still share one schedule.

- ``RateLimiter``: starts per minute as a smooth rate (GCRA).
- ``ConcurrencyLimiter``: slots as leases that expire per holder.
- ``Throttle``: the fleet's answer to a 429, a pause for everyone and a reduced rate.
- ``AccountLimits``: the three together, with one atomic ``try_start`` for the execution code.

Waits are returned, never slept, so a caller can reschedule instead of holding a worker.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable

from .settings import Settings
from .state import LimitsBackend, keys

US = 1_000_000
log = logging.getLogger(__name__)


def _us(seconds: float) -> int:
    return max(0, round(seconds * US))


def _stated_limit(message: str) -> int | None:
    """The limit a 429's text names ("... (limit 2)", "limit: 2"), if it names one."""
    match = re.search(r"\blimit\D{0,3}(\d+)", message, re.IGNORECASE)
    return int(match.group(1)) if match else None


class Throttle:
    """The fleet-wide reaction to HTTP 429 (shared by every process using ``key``).

    ``on_rate_limited`` pauses every ``RateLimiter`` and ``AccountLimits`` built with this
    throttle until ``Retry-After`` has passed (``default_pause_s`` when the provider sent none;
    a pause in force is never shortened, and no single pause exceeds ``max_pause_s``) and
    multiplies the rate factor by ``decrease`` (not below ``floor``). Only the first 429 of a
    pause cuts: later ones answer submits made before the pause began, so they carry no news.

    Recovery is by time, not by successes: after the pause the factor grows back linearly,
    ``1/recovery_s`` per second, reaching 1.0 at most ``recovery_s`` after the pause ends
    (from 0.5 in 15 s with the default 30 s). Counting successes would make recovery depend on
    throughput: minutes at 10 images a minute, a fraction of a second at 5,000. The provider's
    window is one minute, so a time scale of that order matches what it forgives. A success
    therefore needs no call here.

    Parameters:
      backend: the state layer's ``LimitsBackend``.
      key: the throttle's hash, one per provider account.
      default_pause_s: pause for a 429 without ``Retry-After``.
      max_pause_s: the longest single pause, against a wild ``Retry-After``.
      decrease: multiplier applied to the factor by a 429 (0 < decrease <= 1).
      floor: the lowest factor (0 < floor <= 1).
      recovery_s: time for the factor to grow back by 1.0 once a pause has ended.
      counts_key: the account's counts hash, where each 429 is counted (for the metrics).
    """

    def __init__(
        self,
        backend: LimitsBackend,
        key: str,
        *,
        default_pause_s: float = 10.0,
        max_pause_s: float = 300.0,
        decrease: float = 0.5,
        floor: float = 0.1,
        recovery_s: float = 30.0,
        counts_key: str | None = None,
    ):
        if not (0 < decrease <= 1 and 0 < floor <= 1 and recovery_s > 0):
            raise ValueError("Throttle needs 0 < decrease <= 1, 0 < floor <= 1, recovery_s > 0")
        self.backend = backend
        self.key = key
        self.default_pause_s = default_pause_s
        self.max_pause_s = max_pause_s
        self.decrease = decrease
        self.floor = floor
        self.recovery_us = max(1, _us(recovery_s))
        self.counts_key = counts_key

    def on_rate_limited(self, retry_after_s: float | None = None) -> float:
        """Record a 429 for the whole fleet; returns the seconds of pause now in force."""
        pause = self.default_pause_s if retry_after_s is None else retry_after_s
        pause = min(max(0.0, pause), self.max_pause_s)
        return self.backend.throttle_cut(self.key, self.recovery_us, _us(pause), self.decrease, self.floor,
                                         self.counts_key) / US

    def pause_remaining(self) -> float:
        """Seconds until the fleet may start again (0.0 when not paused)."""
        return self._read()[0]

    def factor(self) -> float:
        """The share of the configured rate in force now, in [floor, 1.0]."""
        return self._read()[1]

    def _read(self) -> tuple[float, float]:
        pause_us, ppm = self.backend.throttle_read(self.key, self.recovery_us)
        return pause_us / US, ppm / US


class RateLimiter:
    """Starts per minute for the whole fleet, as a smooth rate (GCRA, a leaky bucket).

    One start is granted every ``60 / per_minute`` seconds, evenly spaced, never two at once.
    Guaranteed: never more than ``per_minute`` grants in any 60-second window of the Redis
    clock. ``headroom`` leaves that share of the rate unused (see ``AccountLimits``).

    ``catch_up`` (default 0): how many starts a fleet that fell behind the schedule (every
    pump busy for a moment when a start came due) may still make up. They come at most twice
    as fast as the rate, no closer than half the spacing after the start before, so there is
    still no burst; and they are paid for out of the sustained rate (the spacing becomes
    ``60 / (per_minute - catch_up)`` seconds), so the 60-second guarantee holds as it is.

    With a ``throttle``, the spacing is divided by ``throttle.factor()``, and while the
    throttle pauses the fleet ``try_acquire`` returns the pause left. Only the first call after
    the pause gets the start; the rest are spaced as usual (no thundering herd).

    GCRA rather than a window counter: a counter per minute lets ``per_minute`` starts through
    at the end of one minute and as many again at the start of the next; a sliding log stores
    one entry per start. GCRA keeps one timestamp per key (two with ``catch_up``) and spaces
    the starts evenly, which is also what the provider sees as the gentlest load.

    Parameters:
      backend: the state layer's ``LimitsBackend``.
      key: the string key of the schedule, one per provider account (and ``<key>:last``, the
        time of the last start).
      per_minute: the account's images started per minute (>= 1).
      catch_up: starts a late fleet may make up (0 <= catch_up < per_minute).
      throttle: the account's ``Throttle``, if 429s should slow this limiter.
      headroom: share of the rate left unused, 0 <= headroom < 1.
    """

    def __init__(
        self,
        backend: LimitsBackend,
        key: str,
        per_minute: int,
        *,
        catch_up: int = 0,
        throttle: Throttle | None = None,
        headroom: float = 0.0,
    ):
        if per_minute < 1 or not 0 <= catch_up < per_minute or not 0 <= headroom < 1:
            raise ValueError("RateLimiter needs per_minute >= 1, 0 <= catch_up < per_minute, 0 <= headroom < 1")
        self.backend = backend
        self.key = key
        self.last_key = keys.limit_part(key, "last")
        self.per_minute = per_minute
        self.catch_up = catch_up
        self.throttle = throttle
        self.interval_us = 60 * US / ((per_minute - catch_up) * (1 - headroom))
        self.catch_up_us = catch_up * self.interval_us

    def try_acquire(self) -> float:
        """Take one start: 0.0 when granted now, else the seconds to wait before trying again."""
        throttle = self.throttle
        wait_us = self.backend.rate_take(
            self.key, self.last_key, throttle.key if throttle is not None else None,
            interval_us=self.interval_us, catch_up_us=self.catch_up_us,
            recovery_us=throttle.recovery_us if throttle is not None else 1,
        )
        return wait_us / US

    def acquire(self, timeout_s: float) -> bool:
        """Take one start, sleeping between tries for up to ``timeout_s``; False if none came."""
        deadline = time.monotonic() + timeout_s
        while True:
            wait = self.try_acquire()
            if wait == 0.0:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(wait, left))


class ConcurrencyLimiter:
    """At most ``limit`` holders at once across the fleet, each holding a lease that expires.

    A lease lasts ``lease_s`` from its last acquire or renew. Expired leases are dropped inside
    the acquire script, so a holder that dies without releasing (SIGKILL, lost machine) gives
    its slot back at most ``lease_s`` after its last renewal; ``release`` gives it back at
    once. Unlike a key-wide TTL, one dead holder never holds the other slots hostage.

    A holder that works longer than ``lease_s`` must ``renew`` before its lease runs out; an
    expired lease is never renewed (its slot may already be someone else's), the holder must
    acquire again. A holder that knows it will next look later than ``lease_s`` from now asks
    for a longer lease (``hold_s``): its slot then comes back at most that long after its
    last renewal, if it dies.

    Parameters:
      backend: the state layer's ``LimitsBackend``.
      key: the sorted set holder -> expiry, one per provider account.
      limit: the most leases at once (>= 1).
      lease_s: how long a lease lasts without renewal.
    """

    def __init__(self, backend: LimitsBackend, key: str, limit: int, lease_s: float = 60.0):
        if limit < 1 or lease_s <= 0:
            raise ValueError("ConcurrencyLimiter needs limit >= 1 and lease_s > 0")
        self.backend = backend
        self.key = key
        self.limit = limit
        self.lease_s = lease_s
        self.lease_us = _us(lease_s)

    def try_acquire(self, holder: str) -> bool:
        """Take a slot for ``holder`` (or renew the one it has); False when all are taken."""
        return self.backend.lease_acquire(self.key, holder, self.limit, self.lease_us)

    def renew(self, holder: str) -> bool:
        """Extend ``holder``'s lease by ``lease_s`` from now; False if it had none left."""
        return self.renew_many([holder]) == 1

    def renew_many(self, holders: Iterable[str], hold_s: float = 0.0) -> int:
        """Renew several leases in one call (a poller's batch), each to ``lease_s`` from now
        or ``hold_s`` if longer; returns how many were live."""
        holders = list(holders)
        if not holders:
            return 0
        return self.backend.lease_renew(self.key, max(self.lease_us, _us(hold_s)), holders)

    def release(self, holder: str) -> None:
        """Give ``holder``'s slot back at once (a no-op if it holds none)."""
        self.backend.lease_release(self.key, holder)

    def in_use(self) -> int:
        """Live leases now (expired ones are not counted)."""
        return self.backend.lease_count(self.key)


class AccountLimits:
    """Everything the execution code asks before starting a prediction on one account.

    ``try_start(holder)`` takes a concurrency lease and a rate token in one Lua script: both
    or neither. A start refused for want of a slot burns no token, and one refused by the rate
    or a 429 pause takes no slot. The limits hold across every process sharing ``prefix``
    (``keys.limits(account)``): the keys are ``<prefix>:rate``, ``<prefix>:leases`` and
    ``<prefix>:throttle``, and ``<prefix>:counts``, where the same scripts count each start
    and each 429 for the metrics (``state.metrics``) at no extra round trip.

    The protocol for one prediction, with ``holder`` unique to it (e.g. ``<job>:<index>``):
    ``try_start`` until it returns 0.0; submit; ``heartbeat`` at least every ``lease_s`` while
    it runs (``heartbeat_many`` for a poller's batch); ``finished`` when it reaches a terminal
    status. If the submit is answered 429: ``rate_limited(retry_after)`` then ``finished``.
    A holder whose next heartbeat is due later than ``lease_s`` (a prediction first checked
    just after the model's latency, a minute say) takes or renews its lease for ``hold_s``
    instead, in the same call: no renewal is made only to keep a slot.

    The provider counts arrivals, not our grants: if the first start of a minute reaches it a
    few milliseconds later than the last, a schedule at exactly ``images_per_minute`` puts one
    start too many in the provider's 60 s. ``headroom`` (default 1%) leaves that share of the
    rate unused, about 0.6 s of slack per minute at every tier, against that jitter: a
    submit's arrival may lag its grant by that much more than another's (milliseconds, on a
    loaded machine tens of them) before a minute holds one start too many. 2% (1.2 s) capped
    the ultra tier at 97.9% of its rate, below the 98% issue 15 asks of it.

    Parameters:
      backend: the state layer's ``LimitsBackend``.
      prefix: the key prefix of the account.
      images_per_minute: the account's starts per minute.
      max_concurrent: the account's predictions in flight.
      lease_s: lease of a prediction without heartbeat (a dead worker's slot comes back then).
      catch_up, headroom: see ``RateLimiter``.
      busy_retry_s: the longest wait suggested while every slot is taken (a slot may free at
        any moment by a ``finished``, which no caller is told about).
      throttle: options for the account's ``Throttle`` (``default_pause_s``, ``decrease``,
        ``floor``, ``recovery_s``, ``max_pause_s``).
    """

    def __init__(
        self,
        backend: LimitsBackend,
        prefix: str,
        *,
        images_per_minute: int,
        max_concurrent: int,
        lease_s: float = 60.0,
        catch_up: int = 0,
        headroom: float = 0.01,
        busy_retry_s: float = 0.5,
        **throttle: float,
    ):
        self.prefix = prefix
        self.backend = backend
        self.counts_key = keys.limit_part(prefix, "counts")
        self.throttle = Throttle(backend, keys.limit_part(prefix, "throttle"), counts_key=self.counts_key, **throttle)
        self.rate = RateLimiter(
            backend, keys.limit_part(prefix, "rate"), images_per_minute, catch_up=catch_up, throttle=self.throttle, headroom=headroom
        )
        self.concurrency = ConcurrencyLimiter(backend, keys.limit_part(prefix, "leases"), max_concurrent, lease_s)
        self.busy_retry_us = max(1, _us(busy_retry_s))
        self._told_lower = False

    @classmethod
    def from_settings(cls, backend: LimitsBackend, settings: Settings, account: str = "default", **options) -> "AccountLimits":
        """The limits of ``settings``' tier (or explicit numbers), under ``keys.limits(account)``.

        At a thousand starts a minute or more, starts are milliseconds apart and a pump can
        come late by a few of them whenever the CPU is busy; a start not taken on time is then
        lost for good. So the fleet may make up one start per thousand a minute (``catch_up``
        of ``RateLimiter``: 5 at 5,000/min, 0.1% of the rate, never two at once, no 60 s
        window over the limit). Below a thousand, none.
        """
        options.setdefault("catch_up", settings.images_per_minute // 1000)
        return cls(
            backend,
            keys.limits(account),
            images_per_minute=settings.images_per_minute,
            max_concurrent=settings.max_concurrent,
            **options,
        )

    def try_start(self, holder: str, hold_s: float = 0.0) -> float:
        """0.0: ``holder`` may submit now (lease and token taken); else seconds to wait first.

        The lease lasts ``lease_s``, or ``hold_s`` if longer. A holder that has a lease
        already keeps it (renewed) but still needs a token: every submit is a start for the
        provider.
        """
        wait_us = self.backend.start(
            rate_key=self.rate.key,
            last_key=self.rate.last_key,
            lease_key=self.concurrency.key,
            throttle_key=self.throttle.key,
            holder=holder,
            limit=self.concurrency.limit,
            lease_us=max(self.concurrency.lease_us, _us(hold_s)),
            interval_us=self.rate.interval_us,
            catch_up_us=self.rate.catch_up_us,
            recovery_us=self.throttle.recovery_us,
            busy_retry_us=self.busy_retry_us,
            counts_key=self.counts_key,
        )
        return wait_us / US

    def finished(self, holder: str) -> None:
        """The prediction reached a terminal status (or was never accepted): free its slot now."""
        self.concurrency.release(holder)

    def heartbeat(self, holder: str) -> bool:
        """Keep ``holder``'s slot; False if its lease had already expired."""
        return self.concurrency.renew(holder)

    def heartbeat_many(self, holders: Iterable[str], hold_s: float = 0.0) -> int:
        """Keep several slots in one call, for ``lease_s`` or ``hold_s`` if longer; returns
        how many leases were still live."""
        return self.concurrency.renew_many(holders, hold_s)

    def rate_limited(self, retry_after_s: float | None = None, message: str = "") -> float:
        """The provider answered 429: pause and slow the whole fleet; returns the pause (s).

        ``message``: the provider's text. When it shows the account's real limit is lower than
        the one configured (it names a smaller limit, or the 429 came with few predictions in
        flight), that is logged once per process with the numbers: the usual cause is a tier
        set higher than the account's (``WAVESPEED_TIER``)."""
        if not self._told_lower:
            self._tell_if_lower(message)
        return self.throttle.on_rate_limited(retry_after_s)

    def _tell_if_lower(self, message: str) -> None:
        stated = _stated_limit(message)
        configured = f"{self.rate.per_minute} a minute and {self.concurrency.limit} at once"
        text = message.lower()
        # The limit the text is about: starts per minute, tasks at once, or (unsaid) either.
        ours = (self.rate.per_minute if "minute" in text else self.concurrency.limit if "concurren" in text
                else min(self.rate.per_minute, self.concurrency.limit))
        if stated is not None and stated < ours:
            why = f"the provider names a limit of {stated}"
        elif stated is None and "minute" not in text:
            # Only a 429 that names no limit asks Redis how many predictions are in flight.
            in_flight = self.concurrency.in_use()
            if in_flight * 2 >= self.concurrency.limit:
                return
            why = f"it came with {in_flight} of {self.concurrency.limit} predictions in flight"
        else:
            return
        self._told_lower = True
        log.warning("the provider answered 429 and %s: the account's real limits look lower than the %s "
                    "configured (WAVESPEED_TIER, or WAVESPEED_IMAGES_PER_MINUTE / WAVESPEED_MAX_CONCURRENT). "
                    "editpipe slows down on each 429; set the account's real tier to stop them. "
                    "The provider said: %s", why, configured, message or "(no message)")

    def in_use(self) -> int:
        return self.concurrency.in_use()

    def pause_remaining(self) -> float:
        return self.throttle.pause_remaining()

    def factor(self) -> float:
        return self.throttle.factor()

