"""Metrics: the fleet's numbers in Prometheus's text format (an output, layer 4).

``FleetCollector`` is a ``prometheus_client`` collector over the state layer's ``Snapshot``
(``state.metrics``): every scrape reads Redis, so the figures are the fleet's, whatever the
number of worker processes and machines, and any process may serve them (``editpipe
metrics-server``, or the webhook server's ``/metrics``). Nothing is kept in the serving
process's memory.

The metrics (names and labels after Prometheus's conventions: base units, ``_total`` for
counters, ``_usd`` for money):

- runs: ``editpipe_runs_finished_total{status}``, ``editpipe_runs_failed_total{error_kind}``;
  per job ``editpipe_job_runs{job_id,status}`` (succeeded, skipped, failed, unfinished),
  ``editpipe_job_runs_planned{job_id}``, ``editpipe_job_info{job_id,job_name,schedule,status}``;
- the queue: ``editpipe_queue_runs{job_id}`` (runs not handed out yet), ``editpipe_due_checks``;
- the account: ``editpipe_predictions_in_flight``, ``editpipe_predictions_in_flight_limit``,
  ``editpipe_starts_total``, ``editpipe_starts_last_minute``,
  ``editpipe_starts_per_minute_limit``, ``editpipe_rate_limited_total`` (429s),
  ``editpipe_throttle_pause_seconds``, ``editpipe_throttle_rate_factor``;
- money: ``editpipe_spend_usd_total``, ``editpipe_schedule_spend_usd_total{schedule}``,
  ``editpipe_day_spend_usd{day}`` (the last 7 UTC days), ``editpipe_job_spend_usd{job_id}``,
  ``editpipe_budget_usd{scope,name}`` and ``editpipe_budget_remaining_usd{scope,name}``
  (scope ``job``: the job id; ``schedule``: the newest listed job of the schedule, whose
  budget is the schedule's per run; ``day``: today, when a daily cap is set);
- time: ``editpipe_prediction_latency_seconds{model}`` and ``editpipe_queue_wait_seconds``
  (histograms);
- ``editpipe_polls_total{outcome}``, ``editpipe_webhooks_received_total``,
  ``editpipe_webhooks_refused_total{reason}``, ``editpipe_webhooks_collected_total``;
- ``editpipe_redis_up``: 0 when Redis did not answer (then nothing else is reported).

Bounded labels: no run is ever a label. ``job_id`` labels only the jobs active now and
those that finished within the last hour (at most 50, of the 200 newest); ``status``,
``error_kind``, ``outcome`` and ``reason`` are closed sets; ``model`` the model specs;
``schedule`` the configured schedules; ``day`` seven days. The label ``job`` is left to
Prometheus (its scrape job), hence ``job_id``.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from .errors import SettingsError
from .failures import ErrorKind
from .ledger import from_micros
from .settings import Settings
from .state import UNAVAILABLE, Snapshot, State
from .state.metrics import POLL_OUTCOMES, WEBHOOK_REFUSALS, Histogram

CONTENT_TYPE = CONTENT_TYPE_LATEST
RUN_STATUSES = ("succeeded", "skipped", "failed")


def usd(micros: int) -> float:
    return float(from_micros(micros))


def account_limits(snap: Snapshot, settings: Settings) -> tuple[int, int]:
    """The account's starts per minute and predictions at once: as the workers published
    them, else as this process's settings say."""
    return (snap.limits.images_per_minute or settings.images_per_minute,
            snap.limits.max_concurrent or settings.max_concurrent)


def daily_cap_usd(snap: Snapshot, settings: Settings) -> Decimal | None:
    """The daily budget the workers enforce (published), else this process's setting."""
    if snap.published:
        return from_micros(snap.daily_budget_micros) if snap.daily_budget_micros is not None else None
    return settings.daily_budget_usd


def families(snap: Snapshot, settings: Settings) -> Iterator[Metric]:
    """Every metric of ``snap`` (see the module's docstring)."""
    yield GaugeMetricFamily("editpipe_redis_up", "Whether Redis answered this scrape.", value=1)

    finished = CounterMetricFamily("editpipe_runs_finished", "Runs finished, by outcome.", labels=["status"])
    for status in RUN_STATUSES:
        finished.add_metric([status], snap.runs_finished.get(status, 0))
    yield finished
    failed = CounterMetricFamily("editpipe_runs_failed", "Failed runs, by why they failed.", labels=["error_kind"])
    for kind in sorted({k.value for k in ErrorKind} | set(snap.failed_by_kind)):
        failed.add_metric([kind], snap.failed_by_kind.get(kind, 0))
    yield failed

    runs = GaugeMetricFamily("editpipe_job_runs", "A job's runs by status (active and recently finished jobs).",
                             labels=["job_id", "status"])
    planned = GaugeMetricFamily("editpipe_job_runs_planned", "A job's planned runs.", labels=["job_id"])
    info = GaugeMetricFamily("editpipe_job_info", "A job's name, schedule and status (always 1).",
                             labels=["job_id", "job_name", "schedule", "status"])
    queue = GaugeMetricFamily("editpipe_queue_runs", "A job's runs waiting in the fair queue (not handed out yet).",
                              labels=["job_id"])
    spend = GaugeMetricFamily("editpipe_job_spend_usd", "What a job has spent (USD).", labels=["job_id"])
    budget = GaugeMetricFamily("editpipe_budget_usd", "A budget (USD): a job's, a schedule's per run, the day's.",
                               labels=["scope", "name"])
    left = GaugeMetricFamily("editpipe_budget_remaining_usd",
                             "What a budget has left (USD): the budget less what is spent and reserved.",
                             labels=["scope", "name"])
    schedules_seen: set[str] = set()
    for job in snap.jobs:
        for status, n in (("succeeded", job.succeeded), ("skipped", job.skipped), ("failed", job.failed),
                          ("unfinished", job.total - job.finished)):
            runs.add_metric([job.id, status], n)
        planned.add_metric([job.id], job.total)
        info.add_metric([job.id, job.name, job.schedule, job.status], 1)
        queue.add_metric([job.id], job.queued)
        spend.add_metric([job.id], usd(job.spent_micros))
        if job.budget_micros is not None:
            remaining = usd(max(0, job.budget_micros - job.held_micros))
            budget.add_metric(["job", job.id], usd(job.budget_micros))
            left.add_metric(["job", job.id], remaining)
            if job.schedule and job.schedule not in schedules_seen:  # the newest first (active, then by age)
                schedules_seen.add(job.schedule)
                budget.add_metric(["schedule", job.schedule], usd(job.budget_micros))
                left.add_metric(["schedule", job.schedule], remaining)
    cap = daily_cap_usd(snap, settings)
    if cap is not None:
        budget.add_metric(["day", snap.today], float(cap))
        left.add_metric(["day", snap.today], max(0.0, float(cap) - usd(snap.day_held_micros)))
    yield from (runs, planned, info, queue, spend, budget, left)

    yield CounterMetricFamily("editpipe_spend_usd", "Money charged for predictions (USD), every job together.",
                              value=usd(snap.spend_micros))
    by_schedule = CounterMetricFamily("editpipe_schedule_spend_usd", "Money charged for a schedule's jobs (USD).",
                                      labels=["schedule"])
    for name, micros in sorted(snap.spend_by_schedule.items()):
        by_schedule.add_metric([name], usd(micros))
    yield by_schedule
    by_day = GaugeMetricFamily("editpipe_day_spend_usd",
                               "Money charged against a UTC day's budget (USD), the last 7 days.", labels=["day"])
    for day, micros in snap.spend_by_day.items():
        by_day.add_metric([day], usd(micros))
    yield by_day

    per_minute, concurrent = account_limits(snap, settings)
    lim = snap.limits
    yield GaugeMetricFamily("editpipe_predictions_in_flight", "Predictions holding a concurrency slot now.",
                            value=lim.in_flight)
    yield GaugeMetricFamily("editpipe_predictions_in_flight_limit", "The account's concurrency cap.",
                            value=concurrent)
    yield CounterMetricFamily("editpipe_starts", "Predictions started (admitted by the account's limits).",
                              value=lim.starts_total)
    yield GaugeMetricFamily("editpipe_starts_last_minute", "Predictions started in the last 60 seconds.",
                            value=lim.starts_last_minute)
    yield GaugeMetricFamily("editpipe_starts_per_minute_limit", "The account's starts per minute.", value=per_minute)
    yield CounterMetricFamily("editpipe_rate_limited", "HTTP 429 answers to submits.", value=lim.rate_limited_total)
    yield GaugeMetricFamily("editpipe_throttle_pause_seconds", "Seconds left of the fleet-wide pause after a 429.",
                            value=lim.pause_s)
    yield GaugeMetricFamily("editpipe_throttle_rate_factor",
                            "The share of the start rate in force (below 1 while recovering from a 429).",
                            value=lim.factor)
    yield GaugeMetricFamily("editpipe_due_checks",
                            "Checks waiting in the due index (predictions in flight, starts to try again).",
                            value=snap.due)

    latency = HistogramMetricFamily("editpipe_prediction_latency_seconds",
                                    "How long predictions took, submit to completion, as the poller saw it.",
                                    labels=["model"])
    for model, hist in sorted(snap.latency.items()):
        latency.add_metric([model], _buckets(hist), hist.sum)
    yield latency
    wait = HistogramMetricFamily("editpipe_queue_wait_seconds",
                                 "From a job's runs being queued to a run's first answered submit.")
    wait.add_metric([], _buckets(snap.queue_wait), snap.queue_wait.sum)
    yield wait

    polls = CounterMetricFamily("editpipe_polls", "Checks of predictions in flight, by outcome.", labels=["outcome"])
    for outcome in POLL_OUTCOMES:
        polls.add_metric([outcome], snap.polls.get(outcome, 0))
    yield polls
    yield CounterMetricFamily("editpipe_webhooks_received", "Webhook POSTs received.", value=snap.webhooks_received)
    refused = CounterMetricFamily("editpipe_webhooks_refused", "Webhook POSTs refused, by reason.", labels=["reason"])
    for reason in WEBHOOK_REFUSALS:
        refused.add_metric([reason], snap.webhooks_refused.get(reason, 0))
    yield refused
    yield CounterMetricFamily("editpipe_webhooks_collected", "Webhooks that sent their run's collect.",
                              value=snap.webhooks_collected)


def _buckets(hist: Histogram) -> list[tuple[str, int]]:
    return [("+Inf" if le == float("inf") else repr(le), n) for le, n in hist.cumulative()]


class FleetCollector(Collector):
    """The fleet's metrics, read from Redis at each scrape (one ``Snapshot``, two round
    trips). Redis away: only ``editpipe_redis_up 0``, so the scrape itself still answers."""

    def __init__(self, state: State, settings: Settings):
        self.state, self.settings = state, settings

    def collect(self) -> Iterator[Metric]:
        try:
            snap = self.state.metrics.snapshot()
        except UNAVAILABLE:
            yield GaugeMetricFamily("editpipe_redis_up", "Whether Redis answered this scrape.", value=0)
            return
        yield from families(snap, self.settings)


def fleet_registry(settings: Settings, ride_out_s: float = 5.0) -> CollectorRegistry:
    """A registry holding only the fleet's collector, on a connection that gives up on Redis
    after ``ride_out_s`` (a scrape must answer, and Prometheus times it out after 10 s)."""
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: the metrics are read from the Redis the workers use")
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(State.from_url(settings.redis_url, ride_out_s=ride_out_s), settings))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry's metrics in the text format (``CONTENT_TYPE``)."""
    return generate_latest(registry)
