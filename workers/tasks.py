"""Thin Celery tasks: each calls one library function and schedules what it returns."""

from __future__ import annotations

import logging

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
    if step.action == "submit":
        submit_run.apply_async((job_id, index), {"failures": step.failures}, countdown=step.delay_s)
    elif step.action == "poll":
        poll.apply_async((job_id, index), {"attempt": attempt, "failures": step.failures}, countdown=step.delay_s)
    elif step.action == "finalize":
        finalize.delay(job_id)


@app.task(name="editpipe.enqueue_chunk")
def enqueue_chunk(job_id: str, start: int) -> None:
    """Enqueue one chunk of a job's runs, then the next chunk: no giant group in one message."""
    ctx = context()
    total = int(ctx.jobs.field(job_id, "total") or 0)
    end = min(total, start + ctx.settings.submit_chunk_size)
    for index in range(start, end):
        submit_run.delay(job_id, index)
    if end < total:
        enqueue_chunk.delay(job_id, end)


@app.task(name="editpipe.submit_run", bind=True)
def submit_run(self: Task, job_id: str, index: int, failures: int = 0) -> None:
    step = start_run(context(), job_id, index, token=self.request.id or "", failures=failures)
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
