"""``editpipe review JOB`` without flags: serve the job's review page and print its URL.

The page is served on this machine (127.0.0.1 and a free port unless told otherwise) until
Ctrl-C. Decisions go to the job's ``review.jsonl`` in storage, so reviewers on other
machines, each with their own ``editpipe review JOB``, share one state. With ``REDIS_URL``
set to the workers' Redis (and the job known there), the page can regenerate rejected runs
too: the new runs are handed to those workers.
"""

from __future__ import annotations

import threading
import webbrowser

import click

from ..report.review_sheet import load_sheet
from ..review_server import ReviewApp, ReviewServer
from ..settings import Settings
from ..state import State
from .job_root import job_storage
from .output import err


def serve_review_page(settings: Settings, job_id: str, output: str | None, reviewer: str, *, host: str, port: int,
                      open_browser: bool) -> None:
    """Serve the page until Ctrl-C (see the module's docstring)."""
    storage = job_storage(settings, job_id, output)
    state = State.from_url(settings.redis_url) if settings.redis_url else None
    if state is not None and not state.jobs.known(job_id):
        state = None  # a job of `editpipe run` (its Redis is gone): reviewed from storage alone
    load_sheet(storage, job_id, state)  # a job with nothing to review says so here, not in the page
    enqueue = None
    if state is not None:
        from workers.celery_app import runs_enqueuer

        enqueue = runs_enqueuer(settings)
    server = ReviewServer(ReviewApp(storage, job_id, reviewer=reviewer, state=state, enqueue_runs=enqueue),
                          host, port).start()
    click.echo(server.url)
    if state is None:
        err.print("editpipe: regenerating needs the workers' Redis (REDIS_URL, with the job in it): the page "
                  "approves and rejects only", markup=False)
    if open_browser and not webbrowser.open(server.url):
        err.print("no web browser found: open the address above yourself", markup=False)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
