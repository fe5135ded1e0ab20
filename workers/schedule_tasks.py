"""The task beat sends for a schedule: start its run (``pipeline.schedules``)."""

from __future__ import annotations

import logging

from celery import Task

from pipeline.errors import EditpipeError
from pipeline.report import finalize_job
from pipeline.schedules import start_by_name
from pipeline.settings import Settings

from . import names
from .celery_app import app, job_enqueuer

log = logging.getLogger(__name__)


@app.task(name=names.RUN_SCHEDULE, bind=True)
def run_schedule(self: Task, name: str) -> None:
    """Start schedule ``name`` unless its previous run is active. A start that cannot be made
    (a bad manifest, say) is logged and recorded, never retried: the next trigger tries again."""
    settings = Settings.from_env()
    try:
        start = start_by_name(settings, name, job_enqueuer(settings), finalize=finalize_job,
                              token=self.request.id or "", trigger="beat")
    except EditpipeError as exc:
        log.error("schedule %s: not started: %s", name, exc)
        return
    if start.outcome == "started" and start.changes is not None:
        c = start.changes
        log.info("schedule %s: started job %s (%d new, %d changed, %d unchanged runs)",
                 name, start.job_id, c.new, c.changed, c.unchanged)
    else:
        log.warning("schedule %s: not started: %s", name, start.reason)
