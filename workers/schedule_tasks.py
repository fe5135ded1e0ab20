"""The task beat sends for a schedule: start its run (``pipeline.schedules``)."""

from __future__ import annotations

import logging
from datetime import datetime

from celery import Task

from pipeline.errors import EditpipeError
from pipeline.report import finalize_job
from pipeline.schedules import start_by_name
from pipeline.settings import Settings

from . import names
from .celery_app import app, job_enqueuer

log = logging.getLogger(__name__)


@app.task(name=names.RUN_SCHEDULE, bind=True)
def run_schedule(self: Task, name: str, scheduled_for: str | None = None, missed: int = 0) -> None:
    """Start schedule ``name`` (for its cron time ``scheduled_for``, which beat sends) unless
    its previous run is active or the time is past its catch-up window. A start that cannot be
    made (a bad manifest, say) is logged and recorded, never retried: the next trigger tries
    again."""
    settings = Settings.from_env()
    at = datetime.fromisoformat(scheduled_for) if scheduled_for else None
    try:
        start = start_by_name(settings, name, job_enqueuer(settings), finalize=finalize_job,
                              token=self.request.id or "", trigger="beat", scheduled_for=at, missed=missed)
    except EditpipeError as exc:
        log.error("schedule %s: not started: %s", name, exc)
        return
    if start.outcome == "started" and start.changes is not None:
        c = start.changes
        log.info("schedule %s: started job %s (%d new, %d changed, %d unchanged runs)%s",
                 name, start.job_id, c.new, c.changed, c.unchanged, f"; {start.reason}" if start.reason else "")
    else:
        log.warning("schedule %s: not started: %s", name, start.reason)
