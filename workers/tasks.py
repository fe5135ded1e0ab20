"""Thin Celery tasks: each calls one library function and schedules what it returns."""

from __future__ import annotations

import logging
import uuid

from celery import Task
from celery.signals import worker_process_init

from pipeline.execution import Context, Next, poll_run, start_run
from pipeline.report import finalize_job
from pipeline.settings import Settings

from .celery_app import app

log = logging.getLogger(__name__)
_context: Context | None = None


@worker_process_init.connect
def _fresh_context(**_: object) -> None:
    # A forked child must not share its parent's sockets.
    global _context
    _context = None


def context() -> Context:
    global _context
    if _context is None:
        _context = Context.from_settings(Settings.from_env())
    return _context


def _schedule(job_id: str, index: int, step: Next, attempt: int = 0) -> None:
    # A countdown longer than the broker's visibility timeout would have the message
    # delivered twice; waking early is harmless (every step checks before it acts).
    delay = min(step.delay_s, context().settings.visibility_timeout_s / 2)
    if step.action == "submit":
        submit_run.apply_async((job_id, index), {"failures": step.failures}, countdown=delay)
    elif step.action == "poll":
        poll.apply_async((job_id, index), {"attempt": attempt, "failures": step.failures}, countdown=delay)
    elif step.action == "finalize":
        finalize.delay(job_id)


@app.task(name="editpipe.enqueue_chunk")
def enqueue_chunk(job_id: str, start: int) -> None:
    """Enqueue one chunk of a job's runs, then the next chunk: no giant group in one message."""
    ctx = context()
    total = int(ctx.jobs.field(job_id, "total") or 0)
    end = min(total, start + ctx.settings.submit_chunk_size)
    for index in ctx.jobs.unfinished(job_id, range(start, end)):
        submit_run.delay(job_id, index)
    if end < total:
        enqueue_chunk.delay(job_id, end)


@app.task(name="editpipe.enqueue_runs")
def enqueue_runs(job_id: str, indices: list[int]) -> None:
    """Enqueue chosen runs of a job again (``editpipe resume``)."""
    for index in indices:
        submit_run.delay(job_id, index)


@app.task(name="editpipe.submit_run", bind=True)
def submit_run(self: Task, job_id: str, index: int, failures: int = 0) -> None:
    token = f"{self.request.id}:{uuid.uuid4().hex}"
    step = start_run(context(), job_id, index, token=token, failures=failures)
    _schedule(job_id, index, step)


@app.task(name="editpipe.poll")
def poll(job_id: str, index: int, attempt: int = 0, failures: int = 0) -> None:
    step = poll_run(context(), job_id, index, attempt=attempt, failures=failures)
    _schedule(job_id, index, step, attempt + 1)


@app.task(name="editpipe.finalize")
def finalize(job_id: str) -> None:
    ctx = context()
    status = finalize_job(ctx.jobs, ctx.storage(ctx.jobs.field(job_id, "output") or ""), job_id)
    log.info("job %s finished: %s", job_id, status.status)
