"""Metrics: the fleet's counters and histograms, kept in Redis so that any process on any
machine reads the same numbers, and the ``Snapshot`` that ``pipeline.metrics`` (the
Prometheus exporter) and ``editpipe top`` are drawn from.

Where each number is counted, always in the atomic step that does what it counts (so no
count is taken twice by a redelivered task, and the hot path pays no extra round trip):
- runs finished by outcome, failed runs by ``error_kind``, spend in total, by UTC day and by
  schedule: ``finish_run.lua`` and ``charge_unconfirmed.lua`` (``budget_lib.lua``), in
  ``keys.METRICS``. The day is the one the run's price was held against (the day budget's);
- starts and 429s: ``limits_start.lua`` and ``limits_throttle.lua``, in the account's
  ``counts`` hash, with a ring of the last 60 seconds' starts;
- queue wait (from a job's registration in the fair queue to a run's first answered submit):
  ``submit_answered.lua``, in the ``queue_wait`` histogram;
- polls by outcome and prediction latency by model: ``record_polls``, one pipelined round
  trip per poller batch (up to 200 checks);
- webhooks received, refused (by reason) and collected: ``count_webhooks``, which each
  webhook server calls once a second with what it counted meanwhile.

Read from what the state already holds: each job's counts, spend and budget (its hash), the
runs waiting in the fair queue, predictions in flight (the concurrency leases), the throttle,
the day's budget counter. The limits and the daily cap the workers run with are published by
each worker process (``publish_config``); a reader that finds none uses its own settings.

Histograms are bucket counters (one field per bucket, not cumulative, with a sum and a
count), so an observation is three increments and no read; the reader makes them
cumulative. Counters only grow (a Redis that loses its data starts them again at zero, which
Prometheus reads as a counter reset). The spend by day keeps a field per UTC day (a few
bytes a day); a snapshot reports the last ``DAYS_KEPT``.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from . import keys
from .connection import Connection

ACTIVE = ("queued", "running")


@dataclass(frozen=True)
class Buckets:
    """A histogram's name (its Redis hash is ``keys.histogram(name)``) and upper bounds (s)."""

    name: str
    bounds: tuple[float, ...]


# Image edits take 10-60 s; the simulator's a fraction of a second.
LATENCY = Buckets("prediction_latency", (0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600))
# From at once to a nightly catalog's hours behind the account's limits.
QUEUE_WAIT = Buckets("queue_wait", (0.1, 0.5, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 14400, 28800, 86400))
POLL_OUTCOMES = ("running", "completed", "error", "other")
WEBHOOK_REFUSALS = ("unsigned", "stale", "bad_signature", "replayed", "bad_token", "bad_body", "busy", "unavailable")
DAYS_KEPT = 7  # the UTC days whose spend a snapshot reports (today and the six before)


def bounds_arg(buckets: Buckets) -> str:
    """The bounds as the Lua side reads them (``metrics_lib.lua``'s ``observe``)."""
    return ",".join(repr(float(b)) for b in buckets.bounds)


def utc_day(when: datetime | None = None) -> str:
    return (when or datetime.now(timezone.utc)).strftime("%Y-%m-%d")


@dataclass(frozen=True)
class Histogram:
    """One label's observations: ``buckets[i]`` counts the values in (bounds[i-1], bounds[i]]
    (the last, those above every bound), with their ``sum`` and ``count``."""

    bounds: tuple[float, ...]
    buckets: tuple[int, ...]
    sum: float
    count: int

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, observations <= it)``, ending with ``(inf, count)``."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.buckets):
            running += n
            out.append((float(bound), running))
        return out


@dataclass(frozen=True)
class JobMetrics:
    """One job, as its hash and the fair queue have it."""

    id: str
    name: str
    status: str
    schedule: str
    total: int
    succeeded: int
    skipped: int
    failed: int
    finished: int
    queued: int  # runs not handed out yet by the fair queue
    spent_micros: int
    held_micros: int  # spent + reserved
    budget_micros: int | None
    created: float  # Unix time (the jobs index)
    started_at: str
    finished_at: str
    failed_by_kind: dict[str, int] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE


@dataclass(frozen=True)
class LimitsMetrics:
    """The account's limits and how much of them is used."""

    images_per_minute: int | None  # as the workers publish them (None: none published)
    max_concurrent: int | None
    in_flight: int  # live concurrency leases
    starts_total: int
    starts_last_minute: int
    rate_limited_total: int  # 429s answered to submits
    pause_s: float  # the fleet-wide pause left after a 429
    factor: float  # the share of the rate in force (1.0 unless recovering from a 429)


@dataclass(frozen=True)
class Snapshot:
    """Everything the metrics show, read in two round trips (``Metrics.snapshot``)."""

    now: float  # Redis time
    runs_finished: dict[str, int]
    failed_by_kind: dict[str, int]
    spend_micros: int
    spend_by_day: dict[str, int]  # the last DAYS_KEPT UTC days
    spend_by_schedule: dict[str, int]
    polls: dict[str, int]
    webhooks_received: int
    webhooks_collected: int
    webhooks_refused: dict[str, int]
    day_held_micros: int  # today's (UTC) day budget counter: spent + reserved
    published: bool  # whether a worker published its limits and daily cap (``publish_config``)
    daily_budget_micros: int | None  # the published daily cap (None: none, or none published)
    limits: LimitsMetrics
    due: int  # members of the due index (checks of predictions in flight, starts to try again)
    jobs: list[JobMetrics]
    latency: dict[str, Histogram]  # by model
    queue_wait: Histogram

    @property
    def today(self) -> str:
        return utc_day(datetime.fromtimestamp(self.now, timezone.utc))


def _int(value: str | None) -> int:
    return int(float(value)) if value not in (None, "") else 0


def _histograms(raw: Mapping[str, str], bounds: tuple[float, ...]) -> dict[str, Histogram]:
    labels: dict[str, dict[str, str]] = {}
    for name, value in raw.items():
        label, _, part = name.rpartition("|")
        labels.setdefault(label, {})[part] = value
    return {
        label: Histogram(bounds, tuple(_int(parts.get(str(i))) for i in range(len(bounds) + 1)),
                         float(parts.get("sum") or 0), _int(parts.get("count")))
        for label, parts in labels.items()
    }


def _prefixed(raw: Mapping[str, str], prefix: str) -> dict[str, int]:
    return {name[len(prefix):]: _int(value) for name, value in raw.items() if name.startswith(prefix)}


class Metrics:
    """The fleet's counters and histograms (see the module's docstring); ``account`` names
    the provider account whose limits are read (``keys.limits``)."""

    def __init__(self, conn: Connection, account: str = "default"):
        self._r = conn.redis
        limits = keys.limits(account)
        self._counts = keys.limit_part(limits, "counts")
        self._leases = keys.limit_part(limits, "leases")
        self._throttle_key = keys.limit_part(limits, "throttle")
        self._lease = conn.script("limits_lease.lua", "limits_lib.lua")
        self._throttle = conn.script("limits_throttle.lua", "limits_lib.lua")

    # written by the fleet
    def publish_config(self, *, images_per_minute: int, max_concurrent: int, daily_budget_micros: int | None) -> None:
        """The limits and the daily cap this process runs with (one write per worker process),
        so that a reader elsewhere shows the fleet's, not its own."""
        self._r.hset(keys.METRICS_CONFIG, mapping={
            "images_per_minute": images_per_minute, "max_concurrent": max_concurrent,
            "daily_budget_micros": "" if daily_budget_micros is None else daily_budget_micros})

    def count_webhooks(self, counts: Mapping[str, int]) -> None:
        """Add a webhook server's counts, in one round trip: ``received`` (every POST),
        ``collected`` (its run's collect sent), ``refused|<reason>`` (``WEBHOOK_REFUSALS``)."""
        pipe = self._r.pipeline(transaction=False)
        for name, n in counts.items():
            pipe.hincrby(keys.METRICS, f"webhooks|{name}", n)
        pipe.execute()

    def record_polls(self, outcomes: Mapping[str, int], latencies: Mapping[str, Iterable[float]]) -> None:
        """A poller batch: its checks by outcome (``POLL_OUTCOMES``) and the latency samples
        of the predictions it found completed, by model, in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for outcome, n in outcomes.items():
            if n:
                pipe.hincrby(keys.METRICS, f"polls|{outcome}", n)
        for model, samples in latencies.items():
            counts: dict[int, int] = {}
            total, n = 0.0, 0
            for seconds in samples:
                i = bisect.bisect_left(LATENCY.bounds, seconds)  # the first bound >= seconds
                counts[i] = counts.get(i, 0) + 1
                total += seconds
                n += 1
            if not n:
                continue
            hist = keys.histogram(LATENCY.name)
            for i, c in counts.items():
                pipe.hincrby(hist, f"{model}|{i}", c)
            pipe.hincrbyfloat(hist, f"{model}|sum", total)
            pipe.hincrby(hist, f"{model}|count", n)
        if pipe.command_stack:
            pipe.execute()

    # read
    def snapshot(self, *, recent_s: float = 3600.0, max_jobs: int = 50, scan: int = 200,
                 recovery_us: int = 30_000_000) -> Snapshot:
        """The numbers now. Jobs: of the ``scan`` newest, every active one (queued or running)
        and those that finished within ``recent_s``, active first, at most ``max_jobs``: so a
        job's labels stay bounded and disappear an hour after it ends. ``recovery_us``: the
        throttle's recovery time (``limits.Throttle``'s default)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.time()
        pipe.hgetall(keys.METRICS)
        pipe.hgetall(self._counts)
        pipe.hgetall(keys.METRICS_CONFIG)
        self._lease(keys=[self._leases], args=["count"], client=pipe)
        self._throttle(keys=[self._throttle_key], args=["read", recovery_us], client=pipe)
        pipe.hgetall(keys.histogram(LATENCY.name))
        pipe.hgetall(keys.histogram(QUEUE_WAIT.name))
        pipe.zcard(keys.DUE)
        pipe.zrevrange(keys.JOBS, 0, scan - 1, withscores=True)
        fair_jobs, fair_requeued = keys.fair_queue()[1:3]
        pipe.hgetall(fair_jobs)
        pipe.hgetall(fair_requeued)
        (t, counters, counts, config, in_flight, throttle, latency, queue_wait, due, newest,
         fair, requeued) = pipe.execute()
        now = int(t[0]) + int(t[1]) / 1e6
        today = datetime.fromtimestamp(now, timezone.utc)
        days = [utc_day(today - timedelta(days=n)) for n in range(DAYS_KEPT)]

        pipe = self._r.pipeline(transaction=False)
        pipe.get(keys.day_budget(days[0]))
        for job_id, _ in newest:
            pipe.hgetall(keys.job(job_id))
        day_held, *hashes = pipe.execute()

        jobs = [self._job(job_id, created, h, fair, requeued)
                for (job_id, created), h in zip(newest, hashes) if "total" in h]
        jobs = [j for j in jobs if j.active or _ended_within(j.finished_at, now, recent_s)]
        jobs.sort(key=lambda j: (not j.active, -j.created))
        by_day = _prefixed(counters, "spend|day|")
        starts_last_minute = 0
        for name, value in counts.items():
            if name.startswith("w"):
                second, _, n = value.partition(":")
                if now - int(second) < 60:
                    starts_last_minute += int(n)
        cap = config.get("daily_budget_micros")
        return Snapshot(
            now=now,
            runs_finished=_prefixed(counters, "runs|"),
            failed_by_kind=_prefixed(counters, "failed|"),
            spend_micros=_int(counters.get("spend")),
            spend_by_day={day: by_day.get(day, 0) for day in days},
            spend_by_schedule=_prefixed(counters, "spend|schedule|"),
            polls=_prefixed(counters, "polls|"),
            webhooks_received=_int(counters.get("webhooks|received")),
            webhooks_collected=_int(counters.get("webhooks|collected")),
            webhooks_refused=_prefixed(counters, "webhooks|refused|"),
            day_held_micros=_int(day_held),
            published=bool(config),
            daily_budget_micros=_int(cap) if cap else None,
            limits=LimitsMetrics(
                images_per_minute=_int(config["images_per_minute"]) if config.get("images_per_minute") else None,
                max_concurrent=_int(config["max_concurrent"]) if config.get("max_concurrent") else None,
                in_flight=int(in_flight),
                starts_total=_int(counts.get("starts")),
                starts_last_minute=starts_last_minute,
                rate_limited_total=_int(counts.get("rate_limited")),
                pause_s=int(throttle[0]) / 1e6,
                factor=int(throttle[1]) / 1e6,
            ),
            due=int(due),
            jobs=jobs[:max_jobs],
            latency=_histograms(latency, LATENCY.bounds),
            queue_wait=_histograms(queue_wait, QUEUE_WAIT.bounds).get("", Histogram(
                QUEUE_WAIT.bounds, (0,) * (len(QUEUE_WAIT.bounds) + 1), 0.0, 0)),
        )

    @staticmethod
    def _job(job_id: str, created: float, h: Mapping[str, str], fair: Mapping[str, str],
             requeued: Mapping[str, str]) -> JobMetrics:
        count, cursor = fair.get(f"{job_id}|count"), fair.get(f"{job_id}|next")
        waiting = max(0, _int(count) - _int(cursor)) if count is not None else 0
        waiting += len((requeued.get(job_id) or "").split())
        budget = h.get("budget_micros") or ""
        return JobMetrics(
            id=job_id, name=h.get("name", ""), status=h.get("status", ""), schedule=h.get("schedule", ""),
            total=_int(h.get("total")), succeeded=_int(h.get("succeeded")), skipped=_int(h.get("skipped")),
            failed=_int(h.get("failed")), finished=_int(h.get("finished")), queued=waiting,
            spent_micros=_int(h.get("spent_micros")), held_micros=_int(h.get("held_micros")),
            budget_micros=_int(budget) if budget else None, created=float(created),
            started_at=h.get("started_at", ""), finished_at=h.get("finished_at", ""),
            failed_by_kind={k: v for k, v in _prefixed(h, "failed|").items() if v > 0},
        )


def _ended_within(finished_at: str, now: float, seconds: float) -> bool:
    if not finished_at:
        return False
    try:
        ended = datetime.fromisoformat(finished_at.replace("Z", "+00:00"))
    except ValueError:
        return False
    if ended.tzinfo is None:
        ended = ended.replace(tzinfo=timezone.utc)
    return now - ended.timestamp() <= seconds
