"""``editpipe report JOB``: where a finished job's report is; ``--refresh`` writes it again."""

from __future__ import annotations

import json
import webbrowser
from pathlib import Path

import click

from ..errors import EditpipeError, SettingsError
from ..state import State
from ..layout import job_file, job_prefix, page_key
from ..report import report_location, write_report
from ..settings import Settings
from ..storage import LocalStorage, open_storage


@click.command("report")
@click.argument("job_id")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a web browser.")
@click.option("--refresh", is_flag=True,
              help="Write the report again from the job's records in Redis (renews S3 links).")
def report_command(job_id: str, open_browser: bool, refresh: bool) -> None:
    """Print where a finished job's report is (a path, or a presigned URL valid 7 days)."""
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: the report is found through the Redis the workers use")
    state = State.from_url(settings.redis_url)
    status = state.jobs.status(job_id)
    if not status.done:
        raise EditpipeError(
            f"job {job_id} is still {status.status} ({status.finished}/{status.total} runs finished); "
            "its report is written when it ends"
        )
    storage = open_storage(status.output, settings)
    first_page = page_key(job_prefix(job_id), 1)
    if refresh:
        summary = json.loads(storage.get_text(job_file(job_id, "summary.json")))
        write_report(state, storage, job_id, summary)  # its results read from Redis a page at a time
    elif not storage.exists(first_page):
        raise EditpipeError(f"job {job_id} has no report at {storage.location(first_page)}")
    location = report_location(storage, job_id)
    click.echo(location)
    if open_browser:
        url = Path(location).as_uri() if isinstance(storage, LocalStorage) else location
        if not webbrowser.open(url):
            click.echo("no web browser found: open the address above yourself", err=True)
