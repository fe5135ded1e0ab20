"""Thin Celery tasks: each calls library functions and follows what they return.

``CeleryTasks`` is the ``pipeline.dispatch.Tasks`` the engine is given: it sends the
messages a step asks for. The long-running tasks (``pump``, ``poller``) work in slices of a
few seconds, each holding a lease (``LEASE_S``), and then hand over to a fresh message
carrying the same token.

Faults, and how leases, the watchdog and the broker relate: a message here is only a
wake-up; the work it stands for is in Redis (the fair queue, the due index, the to-finalize
list; see ``pipeline.dispatch``). A worker SIGKILLed holds its prefetched and unacked
messages (kicks, continuations, countdowns, collects) until the broker's visibility timeout
(600 s) hands them back, but nothing waits for them: the dead holder's leases lapse within
``LEASE_S``, and the watchdog every worker runs (``workers.watchdog``) starts the pump or
poller whose lease lapsed while work waits, and finalizes a job whose finalize was lost. A
message delivered again after the visibility timeout finds its work done, or its lease held,
and returns: acks are late (``task_reject_on_worker_lost``), and every step checks before it
acts, so a second delivery never pays twice. Kick marks (``KICK_S``) only spare the broker
duplicate wake-ups; they live a few seconds, since a kick lost with a dead worker must not
stop the next one for long.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable

from celery import Task
from celery.signals import worker_process_init

from pipeline.dispatch import SLICE_S, Completed, Dispatch, poll_slice, pump as pump_runs
from pipeline.errors import JobLost, ProviderTransient
from pipeline.execution import Context, collect
from pipeline.ledger import to_micros
from pipeline.logs import run_context
from pipeline.provider import Prediction
from pipeline.report import finalize_job
from pipeline.settings import Settings
from pipeline.state import TaskLeases

from . import names
from .celery_app import app
from .watchdog import KICK_S

log = logging.getLogger(__name__)
_context: Context | None = None
_dispatch: Dispatch | None = None
LEASE_S = SLICE_S + 10
COLLECT_BATCH = 8  # completed predictions per collect message, at most
# A batch of checks' completions go to at least this many messages (while each holds one or
# more), so that a few completions are stored side by side in the pool, not one after
# another in one child: each holds its concurrency slot until it is stored.
COLLECT_SPREAD = 4
# The longest the poller waits on a countdown. A check filed meanwhile (a new prediction's)
# may be due before the earliest the poller saw, and nothing wakes a poller that holds its
# lease: it waits this long past its time at most. The members due far off are mostly
# checks kept as safety nets and, after a fault, checks a dead poller had taken; waiting
# up to half a lease for them (6.5 s) made each first check after a kill that much late.
POLLER_WAIT_S = 1.0


@worker_process_init.connect
def _fresh_context(**_: object) -> None:
    # A forked child must not share its parent's sockets.
    global _context, _dispatch
    _context = _dispatch = None


def context() -> Context:
    global _context
    if _context is None:
        settings = Settings.from_env()
        _context = Context.from_settings(settings)
        # What the metrics show as the account's limits and the daily cap: the fleet's own.
        _context.state.metrics.publish_config(
            images_per_minute=settings.images_per_minute, max_concurrent=settings.max_concurrent,
            daily_budget_micros=None if settings.daily_budget_usd is None else to_micros(settings.daily_budget_usd))
    return _context


def dispatch() -> Dispatch:
    global _dispatch
    if _dispatch is None:
        _dispatch = Dispatch(context(), CeleryTasks())
    return _dispatch


class CeleryTasks:
    """The engine's ``Tasks``, as Celery messages."""

    def wake_pumps(self) -> None:
        for slot in range(context().settings.pumps):
            _kick(TaskLeases.pump(slot), pump, slot)

    def wake_poller(self) -> None:
        _kick(TaskLeases.POLLER, poller)

    def collect(self, completed: Completed) -> None:
        """Up to ``COLLECT_BATCH`` to a message (a message costs CPU to send, fetch and ack: see
        ``pipeline.dispatch``), spread over ``COLLECT_SPREAD`` messages while fewer will do."""
        items = [(job_id, index, p.id, p.outputs, p.nsfw) for job_id, index, p in completed]
        size = min(COLLECT_BATCH, max(1, -(-len(items) // COLLECT_SPREAD)))
        for start in range(0, len(items), size):
            collect_runs.delay(items[start : start + size])

    def finalize(self, job_id: str) -> None:
        finalize.delay(job_id)


def _kick(name: str, task: Task, *args: object) -> None:
    """Start a pump or the poller unless one holds its lease or a kick is already on its way.

    The kick mark is cleared by the task as it starts, and a task that stops for want of
    work looks once more after giving up its lease; a kick lost with a worker is sent again
    by a watchdog once its mark lapses: so no work is left without a taker.
    """
    leases = context().state.tasks
    if leases.lease_left(name) == 0 and leases.kick(name, KICK_S):
        task.delay(*args)


_told_lost: set[str] = set()


def _job_lost(lost: JobLost) -> None:
    """One plain line per lost job and process (a lost job's messages may be many)."""
    if lost.job_id in _told_lost:
        return
    _told_lost.add(lost.job_id)
    log.warning("dropping the messages of job %s: Redis has no record of it any more (its state was lost: Redis "
                "restarted without persistence, was flushed, or was replaced); its stored outputs are kept. Rebuild "
                "it from storage: editpipe resume %s --output <its output root>", lost.job_id, lost.job_id)


def _drops_lost_jobs(task: Callable) -> Callable:
    """A message for a job Redis no longer has is dropped with one plain line, never retried
    or logged as a crash: every step meets ``JobLost`` (from the state layer) before it pays
    or writes to Redis; a collect may have stored the output first, which a rebuild keeps."""

    @functools.wraps(task)
    def run(*args: object, **kwargs: object) -> None:
        try:
            task(*args, **kwargs)
        except JobLost as lost:
            _job_lost(lost)

    return run


def _take_lease(name: str, token: str) -> bool:
    """Hold ``name``'s lease for ``token``; False when another holds it. That holder runs
    the work, or, if it died, its lease lapses and a watchdog starts ``name`` again."""
    leases = context().state.tasks
    held = leases.lease(name, token, LEASE_S)
    leases.kicked(name)  # after the lease, so that a watchdog never sees neither
    return held


@app.task(name=names.ENQUEUE_JOB)
@_drops_lost_jobs
def enqueue_job(job_id: str) -> None:
    """Hand a recorded job's runs to the pumps (one queue entry per job, not per run)."""
    dispatch().add_job(job_id)


@app.task(name=names.ENQUEUE_RUNS)
@_drops_lost_jobs
def enqueue_runs(job_id: str, indices: list[int]) -> None:
    """Hand chosen runs of a job out again (``editpipe resume``)."""
    dispatch().resume(job_id, indices)


@app.task(name=names.PUMP)
def pump(slot: int, token: str | None = None) -> None:
    d = dispatch()
    state = d.state
    token = token or uuid.uuid4().hex
    name = TaskLeases.pump(slot)
    if not _take_lease(name, token):
        return
    if pump_runs(d, token):
        pump.apply_async((slot, token))
    else:
        state.tasks.unlease(name, token)
        if state.fair.has_runs():
            _kick(name, pump, slot)
    d.tasks.wake_poller()


@app.task(name=names.POLLER)
def poller(token: str | None = None) -> None:
    d = dispatch()
    state = d.state
    token = token or uuid.uuid4().hex
    if not _take_lease(TaskLeases.POLLER, token):
        return
    wait = poll_slice(d)
    if wait is None:
        state.tasks.unlease(TaskLeases.POLLER, token)
        if state.due.has_due():
            d.tasks.wake_poller()
        return
    poller.apply_async((token,), countdown=max(0.0, min(wait, POLLER_WAIT_S)))


@app.task(name=names.COLLECT, bind=True, max_retries=None)
@_drops_lost_jobs
def collect_run(self: Task, job_id: str, index: int, prediction_id: str, outputs: list[str],
                nsfw: list[bool] | None = None) -> None:
    """Collect one completed prediction (the webhook's message, or a retry after a download
    that failed for now). The retry's countdown is only the quick way: the run's check in the
    due index collects it too, if the retry is lost with its worker. ``nsfw``: the provider's
    flags (a message sent before they were carried has none)."""
    ctx = context()
    with run_context(job_id, index, prediction_id):
        try:
            step = collect(ctx, job_id, index, Prediction(prediction_id, "completed", outputs, nsfw=nsfw))
        except ProviderTransient as exc:
            raise self.retry(countdown=min(30, 2 ** min(self.request.retries, 5)), exc=exc) from None
        dispatch().follow(job_id, index, step)


@app.task(name=names.COLLECT_RUNS)
def collect_runs(items: list[tuple]) -> None:
    """Collect a few completed predictions, each on its own: one whose download fails for
    now is retried alone (``collect_run``), and one that fails otherwise does not stop the
    rest (the poller's safety-net check collects it again, as for a lost collect task). Each
    item: job id, run index, prediction id, outputs and (since checks) the provider's nsfw flags."""
    ctx = context()
    for job_id, index, prediction_id, outputs, *flags in items:
        with run_context(job_id, index, prediction_id):
            _collect_one(ctx, job_id, index, prediction_id, outputs, flags[0] if flags else None)


def _collect_one(ctx: Context, job_id: str, index: int, prediction_id: str, outputs: list[str],
                 nsfw: list[bool] | None) -> None:
    try:
        step = collect(ctx, job_id, index, Prediction(prediction_id, "completed", outputs, nsfw=nsfw))
    except ProviderTransient:
        collect_run.apply_async((job_id, index, prediction_id, outputs, nsfw), countdown=1)
        return
    except JobLost as lost:
        _job_lost(lost)
        return
    except Exception:  # noqa: BLE001 - logged; the rest of the batch still goes
        log.exception("collecting run %s of %s failed; its next check collects it again", index, job_id)
        return
    dispatch().follow(job_id, index, step)


@app.task(name=names.FINALIZE)
@_drops_lost_jobs
def finalize(job_id: str) -> None:
    """Finalize a job whose runs have all finished. A finalize message can be older than the
    job it names (sent before Redis lost the job, taken after ``resume`` rebuilt it): it
    must not write the records of a job with runs still to go, and set its final status."""
    ctx = context()
    with run_context(job_id):
        unfinished = ctx.state.jobs.status(job_id).in_progress
        if unfinished:
            log.info("job %s: not finalizing, %d run(s) have not finished", job_id, unfinished)
            return
        status = finalize_job(ctx.state, ctx.storage(ctx.state.jobs.output_root(job_id)), job_id,
                              open_root=ctx.storage)
        ctx.state.finalized(job_id, ctx.settings.finished_job_ttl_s)
        log.info("job %s finished: %s", job_id, status.status)
