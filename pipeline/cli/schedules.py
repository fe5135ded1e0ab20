"""``editpipe schedules``: list the schedules, start one now.

``editpipe schedules`` lists every schedule of the schedules file with its next run time
and its last start's outcome; ``editpipe schedules run NAME [--wait]`` starts one now, as
beat would (the same overlap lock, the same records), and with ``--wait`` follows the job
and exits like ``run``.
"""

from __future__ import annotations

import json
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ..errors import EditpipeError
from ..state import State
from ..schedules import Schedule, Start, load_schedules, schedule_jobs, start_by_name
from ..settings import Settings
from .output import console, err, finish


@click.group("schedules", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.pass_context
def schedules(ctx: click.Context, as_json: bool) -> None:
    """List the schedules with their next run time and last run's outcome
    (`celery -A workers beat` runs them; `schedules run NAME` starts one now)."""
    if ctx.invoked_subcommand is not None:
        return
    settings = Settings.from_env()
    path = settings.schedules_file
    listed = load_schedules(path)
    state = schedule_jobs(settings) if settings.redis_url else None
    now = datetime.now(timezone.utc)
    rows = [_row(s, state, now) for s in listed]
    if as_json:
        click.echo(json.dumps({"file": str(path), "schedules": rows}, indent=2))
        return
    if not listed:
        console.print(f"No schedules in {path}" + ("" if path.exists() else " (no such file)"), markup=False)
        return
    table = Table(title=str(path))
    for col in ("schedule", "cron", "next run", "last start", "outcome", "job"):
        table.add_column(col, overflow="fold")
    for s, row in zip(listed, rows):
        last = row["last"] or {}
        table.add_row(
            s.name,
            f"{s.cron} {s.timezone}",
            _local(row["next_run"]) if row["next_run"] else "disabled",
            _local(last["at"]) if last else "never",
            _outcome(last) if last else "-",
            (last.get("job_id") or "") if last else "",
        )
    console.print(table)
    for row in rows:
        if row["manifest_missing"]:
            console.print(f"{row['name']}: no manifest at {row['manifest']}", markup=False)
    if state is None:
        console.print("(REDIS_URL is not set: last starts are not shown)", markup=False)


def _row(schedule: Schedule, state: State | None, now: datetime) -> dict[str, Any]:
    last = state.schedule(schedule.name).last() if state is not None else None
    if last and last.get("job_id"):
        try:
            last["job_status"] = state.jobs.status(last["job_id"]).status
        except EditpipeError:
            last["job_status"] = None
    manifest_missing = not schedule.manifest.startswith("s3://") and not Path(schedule.manifest).is_file()
    return {
        "name": schedule.name,
        "enabled": schedule.enabled,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "manifest": schedule.manifest,
        "manifest_missing": manifest_missing,
        "budget_usd": str(schedule.budget_usd) if schedule.budget_usd is not None else None,
        "next_run": schedule.next_run(now).isoformat() if schedule.enabled else None,
        "last": last,
    }


def _local(iso: str) -> str:
    moment = datetime.fromisoformat(iso)
    return moment.strftime("%Y-%m-%d %H:%M %Z").strip()


def _outcome(last: dict[str, Any]) -> str:
    if last["outcome"] == "started":
        return last.get("job_status") or "started"
    reason = (last.get("reason") or "").splitlines()[0] if last.get("reason") else ""
    return f"{last['outcome']}: {reason}" if reason else last["outcome"]


@schedules.command("run")
@click.argument("name")
@click.option("--wait", is_flag=True, help="Follow the job (a bar, or plain lines off a terminal); exit like `run`.")
def run_now(name: str, wait: bool) -> None:
    """Start schedule NAME now (unless its previous run is still active); prints the job id."""
    from workers.celery_app import job_enqueuer

    from ..report import finalize_job

    settings = Settings.from_env()
    start = start_by_name(settings, name, job_enqueuer(settings), finalize=finalize_job, token=uuid.uuid4().hex,
                          trigger="manual")
    if start.outcome != "started":
        raise EditpipeError(f"schedule {name}: not started: {start.reason}")
    click.echo(start.job_id)
    err.print(_changes_line(start), markup=False)
    if wait:
        sys.exit(finish(schedule_jobs(settings), start.job_id))


def _changes_line(start: Start) -> str:
    c = start.changes
    assert c is not None
    return f"{start.schedule}: runs {c.new} new, {c.changed} changed, {c.unchanged} unchanged (skipped at $0)"
