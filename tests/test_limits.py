"""Account limits hold across processes, against the session's real redis-server.

Several tests run the limiters from separate worker processes at once, since what matters is
that the limits are the fleet's, not one process's. Rates are scaled up (600 a minute, one
start per 100 ms) so that a window of one second stands in for the provider's minute.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import Counter

import pytest
import redis

from pipeline.limits import AccountLimits, ConcurrencyLimiter, RateLimiter, Throttle
from pipeline.state import Connection, FairQueue, LimitsBackend
from pipeline.settings import Settings

ctx = multiprocessing.get_context("fork")


@pytest.fixture
def r(redis_url: str):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def conn(redis_url: str) -> Connection:
    return Connection.from_url(redis_url)


@pytest.fixture
def backend(conn: Connection) -> LimitsBackend:
    return LimitsBackend(conn)


@pytest.fixture
def key() -> str:
    return f"test:limits:{uuid.uuid4().hex[:10]}"


def busiest(times: list[float], window_s: float) -> int:
    """The most events in any half-open window ``[t, t + window_s)``."""
    times = sorted(times)
    most, first = 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


# --- worker processes -------------------------------------------------------------------

def _hammer_rate(url: str, key: str, per_minute: int, catch_up: int, start_at: float, run_s: float, out) -> None:
    limiter = RateLimiter(LimitsBackend.from_url(url), key, per_minute, catch_up=catch_up)
    grants = []
    while time.time() < start_at:
        time.sleep(0.001)
    while time.time() < start_at + run_s:
        wait = limiter.try_acquire()
        if wait == 0.0:
            grants.append(time.time())
        else:
            time.sleep(min(wait, 0.005))
    out.put(grants)


def _hammer_slots(url: str, key: str, limit: int, counter: str, start_at: float, run_s: float, out) -> None:
    client = redis.Redis.from_url(url)
    limiter = ConcurrencyLimiter(LimitsBackend.from_url(url), key, limit, lease_s=10)
    peaks = {"held": 0, "in_use": 0, "grants": 0}
    lock = threading.Lock()

    def contender(name: str) -> None:
        while time.time() < start_at:
            time.sleep(0.001)
        while time.time() < start_at + run_s:
            if not limiter.try_acquire(name):
                time.sleep(0.002)
                continue
            held = client.incr(counter)
            in_use = limiter.in_use()
            time.sleep(0.01)
            client.decr(counter)
            limiter.release(name)
            with lock:
                peaks["held"] = max(peaks["held"], held)
                peaks["in_use"] = max(peaks["in_use"], in_use)
                peaks["grants"] += 1

    threads = [threading.Thread(target=contender, args=(f"{os.getpid()}-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(peaks)


def _hold_forever(url: str, key: str, ready) -> None:
    ConcurrencyLimiter(LimitsBackend.from_url(url), key, 1, lease_s=1).try_acquire("doomed")
    ready.set()
    time.sleep(60)


def _try_start(url: str, prefix: str, holder: str) -> float:
    limits = AccountLimits(LimitsBackend.from_url(url), prefix, images_per_minute=600, max_concurrent=10, recovery_s=2)
    return limits.try_start(holder)


def _drain(url: str, key: str, out) -> None:
    queue = FairQueue(Connection.from_url(url), key)
    got = []
    while (run := queue.pop()) is not None:
        got.append(run)
    out.put(got)


def _gather(target, args_for, count: int) -> list:
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args_for(i), out)) for i in range(count)]
    for p in procs:
        p.start()
    results = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    return results


# --- rate -----------------------------------------------------------------------------

def test_rate_never_exceeds_per_minute_in_any_window_across_processes(redis_url, key):
    per_minute, catch_up, run_s = 600, 0, 2.0
    start_at = time.time() + 0.3
    results = _gather(_hammer_rate, lambda i: (redis_url, key, per_minute, catch_up, start_at, run_s), 3)
    grants = [t for per_process in results for t in per_process]

    assert all(per_process for per_process in results), "every process got starts"
    # One second at 600 a minute is 10 starts; scaled, "at most per_minute in any minute".
    assert busiest(grants, 1.0) <= per_minute // 60 + 1
    # And the rate is held, not just capped: ~20 starts in 2 s.
    assert len(grants) >= 0.8 * run_s * per_minute / 60


def test_starts_made_up_never_come_at_once_and_are_paid_for_out_of_the_rate(r, key, backend):
    limiter = RateLimiter(backend, key, per_minute=600, catch_up=2)
    interval_s = 60 / (600 - 2)  # the spacing, paid for the two that may be made up
    granted = []  # the Redis server's time of each start, as the script stored it
    while len(granted) < 8:
        wait = limiter.try_acquire()
        if wait == 0.0:
            granted.append(int(r.get(limiter.last_key)) / 1e6)
        else:
            time.sleep(wait)
    gaps = [b - a for a, b in zip(granted, granted[1:])]

    # After a quiet spell the two are made up at twice the rate: 0, ½, 1, 1½, 2, 3, 4, 5
    # intervals; never two starts at once.
    assert min(gaps) >= interval_s / 2 - 1e-6
    assert granted[2] - granted[0] < 1.9 * interval_s  # 2 intervals apart without catch-up
    # Never more than the rate allows: 8 starts span at least 8 - 1 - 2 intervals.
    assert granted[-1] - granted[0] >= 5 * interval_s - 1e-6


def test_account_limits_make_up_one_start_per_thousand_a_minute(r, key, backend):
    for tier, catch_up in (("bronze", 0), ("silver", 0), ("gold", 3), ("ultra", 5)):
        limits = AccountLimits.from_settings(backend, Settings.from_env({"WAVESPEED_TIER": tier}), account=f"{key}-{tier}")
        assert limits.rate.catch_up == catch_up


def test_try_acquire_reports_the_wait_and_grants_after_it(r, key, backend):
    limiter = RateLimiter(backend, key, per_minute=600)

    assert limiter.try_acquire() == 0.0
    wait = limiter.try_acquire()
    assert 0.05 < wait <= 0.1
    assert limiter.acquire(timeout_s=1.0)


def test_account_limits_leave_headroom_for_arrival_jitter(r, key, backend):
    limits = AccountLimits.from_settings(backend, Settings.from_env({"WAVESPEED_TIER": "silver"}), account=key)

    assert (limits.rate.per_minute, limits.concurrency.limit) == (500, 300)
    assert limits.rate.key == f"ep:limits:{key}:rate"
    before = time.monotonic()
    assert limits.try_start("a") == 0.0
    wait = limits.try_start("b")
    between = time.monotonic() - before  # the wait is counted from the second ask
    # 1% below 500 a minute: 121.2 ms apart instead of 120 ms (2% would be 122.4 ms).
    assert 0.1205 < wait + between and wait <= 0.1213, (wait, between)


# --- concurrency ----------------------------------------------------------------------

def test_concurrency_never_above_limit_across_processes(redis_url, r, key, backend):
    limit, counter = 2, f"{key}:held"
    start_at = time.time() + 0.3
    results = _gather(_hammer_slots, lambda i: (redis_url, key, limit, counter, start_at, 1.5), 3)

    assert max(p["held"] for p in results) <= limit
    assert max(p["in_use"] for p in results) <= limit
    assert max(p["held"] for p in results) == limit, "the limit was reached, so it was tested"
    assert sum(p["grants"] for p in results) > 20
    assert ConcurrencyLimiter(backend, key, limit).in_use() == 0


def test_killed_holders_slot_comes_back_within_its_lease(redis_url, r, key, backend):
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_forever, args=(redis_url, key, ready))
    holder.start()
    assert ready.wait(10)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    killed_at = time.monotonic()
    limiter = ConcurrencyLimiter(backend, key, 1, lease_s=1)

    assert not limiter.try_acquire("next")
    while not limiter.try_acquire("next"):
        assert time.monotonic() - killed_at < 1.5, "the dead holder's slot never came back"
        time.sleep(0.02)
    assert limiter.in_use() == 1


def test_release_frees_the_slot_at_once(r, key, backend):
    limiter = ConcurrencyLimiter(backend, key, 1, lease_s=60)

    assert limiter.try_acquire("a")
    assert limiter.try_acquire("a"), "a holder asking again keeps its own slot"
    assert not limiter.try_acquire("b")
    limiter.release("a")
    assert limiter.try_acquire("b")
    assert limiter.in_use() == 1


def test_renewed_lease_is_kept_and_expired_one_is_not_renewed(r, key, backend):
    limiter = ConcurrencyLimiter(backend, key, 1, lease_s=0.5)

    assert limiter.try_acquire("a")
    time.sleep(0.3)
    assert limiter.renew("a")
    time.sleep(0.3)
    assert not limiter.try_acquire("b"), "renewed: still a's"
    time.sleep(0.5)
    assert limiter.in_use() == 0
    assert not limiter.renew("a")
    assert limiter.try_acquire("b")
    assert limiter.renew_many(["a", "b"]) == 1


def test_a_lease_asked_for_longer_holds_its_slot_that_long_and_no_longer(r, key, backend):
    # A prediction first checked after a minute takes its slot for that long at the start
    # and at each check: no renewal only to keep it, and a dead holder's slot still comes back.
    limits = AccountLimits(backend, key, images_per_minute=60_000, max_concurrent=1, lease_s=0.4)

    assert limits.try_start("a", hold_s=1.2) == 0.0
    time.sleep(0.7)
    assert limits.try_start("b") > 0, "held past lease_s, as asked"
    time.sleep(0.7)
    assert limits.in_use() == 0, "not renewed: the slot came back once the hold ran out"
    assert limits.try_start("b") == 0.0
    assert limits.heartbeat_many(["b"], hold_s=1.2) == 1
    time.sleep(0.7)
    assert limits.in_use() == 1 and limits.try_start("c") > 0
    assert limits.heartbeat_many(["b"]) == 1, "a renewal without hold_s lasts lease_s"
    time.sleep(0.55)
    assert limits.in_use() == 0


# --- throttle -------------------------------------------------------------------------

def test_a_429_pauses_every_process_then_the_rate_recovers(redis_url, r, key, backend):
    limits = AccountLimits(backend, key, images_per_minute=600, max_concurrent=10, recovery_s=2)
    with ctx.Pool(1) as other:
        other.apply(time.sleep, (0,))  # started before the 429, like a running worker

        limits.rate_limited(0.6)
        assert other.apply(_try_start, (redis_url, key, "elsewhere")) > 0.3
        assert limits.try_start("here") > 0.3
        assert limits.in_use() == 0, "a paused start takes no slot"

        time.sleep(limits.pause_remaining())
        assert other.apply(_try_start, (redis_url, key, "elsewhere")) == 0.0
    factor = limits.factor()
    assert 0.5 <= factor < 0.8, "cut by half, recovering from there"
    # Below full rate the spacing is more than the 100 ms of 600 a minute.
    while (wait := limits.try_start("here")) > 0:
        time.sleep(wait)
    assert limits.try_start("later") > 0.1

    time.sleep((1.0 - factor) * 2)
    assert limits.factor() == 1.0


def test_429s_during_a_pause_extend_it_but_cut_the_rate_once(r, key, backend):
    throttle = Throttle(backend, key, decrease=0.5, floor=0.1)

    assert throttle.on_rate_limited(2.0) == pytest.approx(2.0, abs=0.01)
    assert throttle.on_rate_limited(1.0) > 1.9, "a pause in force is never shortened"
    assert throttle.on_rate_limited(3.0) == pytest.approx(3.0, abs=0.01)
    assert throttle.factor() == 0.5


def test_throttle_uses_a_default_pause_and_never_goes_below_its_floor(r, key, backend):
    throttle = Throttle(backend, key, default_pause_s=4.0, decrease=0.5, floor=0.1)

    assert throttle.on_rate_limited(None) == pytest.approx(4.0, abs=0.01)
    r.delete(key)
    for _ in range(6):
        throttle.on_rate_limited(0.0)  # no pause in force, so each one cuts
    assert throttle.factor() == pytest.approx(0.1, abs=0.001)
    assert throttle.pause_remaining() == 0.0


# --- atomic start ---------------------------------------------------------------------

def test_start_refused_for_a_slot_burns_no_rate_token(r, key, backend):
    limits = AccountLimits(backend, key, images_per_minute=60, max_concurrent=1, busy_retry_s=0.2, headroom=0.0)

    assert limits.try_start("a") == 0.0
    time.sleep(1.05)  # the rate allows the next start now; only the slot is missing
    for _ in range(5):
        assert 0.0 < limits.try_start("b") <= 0.2
    limits.finished("a")
    assert limits.try_start("b") == 0.0, "the refused tries took no tokens"


def test_start_refused_by_the_rate_takes_no_slot(r, key, backend):
    limits = AccountLimits(backend, key, images_per_minute=60, max_concurrent=5, headroom=0.0)

    assert limits.try_start("a") == 0.0
    assert 0.9 < limits.try_start("b") <= 1.0
    assert limits.in_use() == 1
    assert limits.heartbeat("a") and not limits.heartbeat("b")


# --- fair queue -----------------------------------------------------------------------

def test_small_job_behind_a_100000_run_job_gets_its_runs_within_200_pops(r, key, conn):
    queue = FairQueue(conn, key)
    assert queue.push("big", 100_000)
    assert queue.push("small", 100)

    runs = [queue.pop() for _ in range(200)]

    assert [i for job, i in runs if job == "small"] == list(range(100))
    assert [i for job, i in runs if job == "big"] == list(range(100))
    # A cursor per job, not an entry per run: six fields a job (count, cursor, weight, turns
    # used, queued, when it was pushed).
    assert r.hlen(f"{key}:jobs") == 12 and r.llen(f"{key}:ring") <= 2


def test_priority_gives_a_job_that_many_turns_in_a_row(r, key, conn):
    queue = FairQueue(conn, key)
    queue.push("urgent", 100, priority=3)
    queue.push("normal", 100)

    assert [queue.pop()[0] for _ in range(8)] == ["urgent"] * 3 + ["normal"] + ["urgent"] * 3 + ["normal"]


def test_requeued_run_comes_back_before_the_cursor_and_removed_job_stops(r, key, conn):
    queue = FairQueue(conn, key)
    queue.push("a", 3)
    assert not queue.push("a", 50), "pushing a known job again changes nothing"
    assert [queue.pop() for _ in range(4)] == [("a", 0), ("a", 1), ("a", 2), None]

    assert queue.requeue("a", 1)
    assert not queue.requeue("a", 1), "already queued again"
    assert not queue.requeue("a", 7), "never handed out"
    assert queue.pop() == ("a", 1)
    assert queue.pop() is None

    queue.push("b", 5)
    assert queue.pop() == ("b", 0)
    assert queue.remove("b")
    assert not queue.requeue("b", 0), "a cancelled job stays cancelled"
    assert queue.pop() is None


def test_concurrent_pops_hand_out_every_run_exactly_once(redis_url, r, key, conn):
    queue = FairQueue(conn, key)
    sizes = {"j1": 500, "j2": 300, "j3": 1}
    for job, count in sizes.items():
        queue.push(job, count)

    results = _gather(_drain, lambda i: (redis_url, key), 3)
    runs = Counter(run for got in results for run in got)

    assert set(runs) == {(job, i) for job, count in sizes.items() for i in range(count)}
    assert max(runs.values()) == 1


def test_a_429_naming_a_lower_limit_than_configured_is_logged_once_with_the_numbers(r, key, backend, caplog):
    # The account is bronze (2 a minute, 2 at once) but editpipe was told silver (500, 300).
    limits = AccountLimits.from_settings(backend, Settings.from_env({"WAVESPEED_TIER": "silver"}), account=key)
    with caplog.at_level("WARNING", logger="pipeline.limits"):
        for _ in range(3):
            limits.rate_limited(1.0, "submit: HTTP 429: too many images started per minute (limit 2)")
    told = [rec.getMessage() for rec in caplog.records if "look lower" in rec.getMessage()]
    assert len(told) == 1
    assert "names a limit of 2" in told[0] and "500 a minute and 300 at once" in told[0]


def test_a_429_at_the_configured_limit_is_not_called_a_lower_limit(r, key, backend, caplog):
    limits = AccountLimits.from_settings(backend, Settings.from_env({"WAVESPEED_TIER": "bronze"}), account=key)
    with caplog.at_level("WARNING", logger="pipeline.limits"):
        limits.rate_limited(1.0, "submit: HTTP 429: too many images started per minute (limit 2)")
        limits.rate_limited(1.0, "submit: HTTP 429: too many concurrent tasks (limit 2)")
    assert not [rec for rec in caplog.records if "look lower" in rec.getMessage()]
