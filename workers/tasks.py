"""Thin Celery tasks: each calls library functions and schedules what they return.

The long-running ones (``pump``, ``poller``) work in slices of a few seconds and then hand
over to a fresh message carrying the same lease token, so a worker restart or a SIGKILL
loses at most one slice: acks are late, and the lease expires by itself.
"""

from __future__ import annotations

import logging
import time
import uuid

from celery import Task
from celery.signals import worker_process_init

from pipeline.dispatch import SLICE_S, Dispatch, Due, poll_due, pump as pump_runs
from pipeline.errors import ProviderTransient
from pipeline.execution import Context, Next, collect, start_run
from pipeline.provider import Prediction
from pipeline.report import finalize_job
from pipeline.settings import Settings

from .celery_app import app

log = logging.getLogger(__name__)
_context: Context | None = None
_dispatch: Dispatch | None = None
LEASE_S = SLICE_S + 10
COLLECT_BATCH = 8  # completed predictions per collect message


@worker_process_init.connect
def _fresh_context(**_: object) -> None:
    # A forked child must not share its parent's sockets.
    global _context, _dispatch
    _context = _dispatch = None


def context() -> Context:
    global _context
    if _context is None:
        _context = Context.from_settings(Settings.from_env())
    return _context


def dispatch() -> Dispatch:
    global _dispatch
    if _dispatch is None:
        _dispatch = Dispatch(context(), schedule, kick_poller, collect_many)
    return _dispatch


def _kick(name: str, task: Task, *args: object) -> None:
    """Start a pump or the poller unless one holds its lease or a kick is already on its way.

    The kick mark is cleared by the task as it starts, and a task that stops for want of
    work looks once more after giving up its lease: so no work is left without a taker.
    """
    d = dispatch()
    if d.lease_left(name) == 0 and d.r.set(f"ep:kick:{name}", 1, nx=True, px=int(LEASE_S * 1000)):
        task.delay(*args)


def _take_lease(name: str, token: str, task: Task, args: tuple, has_work) -> bool:
    """Hold ``name``'s lease, or come back when the current holder's lease runs out (it may
    have died with it) as long as there is work."""
    d = dispatch()
    d.r.delete(f"ep:kick:{name}")
    if d.lease(name, token, LEASE_S):
        return True
    if has_work():
        task.apply_async(args, countdown=d.lease_left(name) + 0.5)
    return False


def kick_pumps() -> None:
    for slot in range(context().settings.pumps):
        _kick(f"pump:{slot}", pump, slot)


def kick_poller() -> None:
    _kick("poller", poller)


def schedule(job_id: str, index: int, step: Next) -> None:
    """Turn a step's ``Next`` into the message (or due-index entry) that carries it out."""
    # A countdown longer than the broker's visibility timeout would have the message
    # delivered twice; waking early is harmless (every step checks before it acts).
    delay = min(step.delay_s, context().settings.visibility_timeout_s / 2)
    if step.action == "submit":
        submit_run.apply_async((job_id, index), {"failures": step.failures}, countdown=delay)
    elif step.action == "wait":
        if not dispatch().requeue(job_id, index):
            submit_run.apply_async((job_id, index), {"failures": step.failures}, countdown=delay)
        kick_pumps()
    elif step.action == "poll":
        dispatch().schedule([], [(Due(job_id, index, 0, step.failures, time.time()).member, delay)])
        kick_poller()
    elif step.action == "collect" and step.prediction is not None:
        collect_run.delay(job_id, index, step.prediction.id, step.prediction.outputs)
    elif step.action == "finalize":
        finalize.delay(job_id)


def collect_many(completed: list[tuple[str, int, Prediction]]) -> None:
    """Hand completed predictions to ``collect_runs``, ``COLLECT_BATCH`` to a message (a
    message costs CPU to send, fetch and ack: see ``pipeline.dispatch``)."""
    items = [(job_id, index, p.id, p.outputs) for job_id, index, p in completed]
    for start in range(0, len(items), COLLECT_BATCH):
        collect_runs.delay(items[start : start + COLLECT_BATCH])


@app.task(name="editpipe.enqueue_job")
def enqueue_job(job_id: str) -> None:
    """Hand a recorded job's runs to the pumps (one queue entry per job, not per run)."""
    ctx = context()
    total = int(ctx.jobs.field(job_id, "total") or 0)
    dispatch().add_job(job_id, total, int(ctx.jobs.field(job_id, "priority") or 1))
    kick_pumps()


@app.task(name="editpipe.enqueue_runs")
def enqueue_runs(job_id: str, indices: list[int]) -> None:
    """Hand chosen runs of a job out again (``editpipe resume``)."""
    for index in indices:
        if not dispatch().requeue(job_id, index):
            submit_run.delay(job_id, index)
    kick_pumps()


@app.task(name="editpipe.submit_run", bind=True)
def submit_run(self: Task, job_id: str, index: int, failures: int = 0) -> None:
    """One run's submit, retried on its own after a transient error."""
    ctx = context()
    token = f"{self.request.id}:{uuid.uuid4().hex}"
    admit = ctx.limits.try_start if ctx.limits else None
    schedule(job_id, index, start_run(ctx, job_id, index, token=token, failures=failures, admit=admit))


@app.task(name="editpipe.pump")
def pump(slot: int, token: str | None = None) -> None:
    d = dispatch()
    token = token or uuid.uuid4().hex
    name = f"pump:{slot}"
    if not _take_lease(name, token, pump, (slot,), d.has_runs):
        return
    if pump_runs(d, token):
        pump.apply_async((slot, token))
    else:
        d.unlease(name, token)
        if d.has_runs():
            _kick(name, pump, slot)
    kick_poller()


@app.task(name="editpipe.poller")
def poller(token: str | None = None) -> None:
    d = dispatch()
    token = token or uuid.uuid4().hex
    if not _take_lease("poller", token, poller, (), d.has_due):
        return
    for job_id in d.ctx.jobs.stale_finalizations(older_than_s=30):
        finalize.delay(job_id)  # its own finalize was lost with a worker
    deadline = time.monotonic() + SLICE_S
    while True:
        next_due = poll_due(d)
        left = deadline - time.monotonic()
        if next_due is None:
            d.unlease("poller", token)
            if d.has_due():
                kick_poller()
            return
        if next_due > left:
            poller.apply_async((token,), countdown=max(0.0, min(next_due, LEASE_S / 2)))
            return
        time.sleep(next_due)


@app.task(name="editpipe.collect", bind=True, max_retries=None)
def collect_run(self: Task, job_id: str, index: int, prediction_id: str, outputs: list[str]) -> None:
    ctx = context()
    try:
        step = collect(ctx, job_id, index, Prediction(prediction_id, "completed", outputs))
    except ProviderTransient as exc:
        raise self.retry(countdown=min(30, 2 ** min(self.request.retries, 5)), exc=exc) from None
    schedule(job_id, index, step)


@app.task(name="editpipe.collect_runs")
def collect_runs(items: list[tuple[str, int, str, list[str]]]) -> None:
    """Collect a few completed predictions, each on its own: one whose download fails for
    now is retried alone (``collect_run``), and one that fails otherwise does not stop the
    rest (the poller's safety-net check collects it again, as for a lost collect task)."""
    ctx = context()
    for job_id, index, prediction_id, outputs in items:
        try:
            step = collect(ctx, job_id, index, Prediction(prediction_id, "completed", outputs))
        except ProviderTransient:
            collect_run.apply_async((job_id, index, prediction_id, outputs), countdown=1)
            continue
        except Exception:  # noqa: BLE001 - logged; the rest of the batch still goes
            log.exception("collecting run %s of %s failed; its next check collects it again", index, job_id)
            continue
        schedule(job_id, index, step)


@app.task(name="editpipe.finalize")
def finalize(job_id: str) -> None:
    ctx = context()
    status = finalize_job(ctx.jobs, ctx.storage(ctx.jobs.field(job_id, "output") or ""), job_id)
    ctx.jobs.finalized(job_id)
    log.info("job %s finished: %s", job_id, status.status)
