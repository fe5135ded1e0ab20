"""What `status`, `jobs` and `resume` say about a job Redis no longer has.

Redis that lost its data (restarted without persistence, flushed, replaced) no longer knows
the jobs it held; storage still does. Given the output root (``--output``), these read it:
a job marked open there that Redis does not know is *lost*, and ``resume`` rebuilds it
(``pipeline.recovery``); a job finalized there is shown from its summary. Without the output
root, a job is called lost when Redis's records begin after it was submitted
(``state.Jobs.missing``). The wording is plain, the exit code of a lost job non-zero.
"""

from __future__ import annotations

import json
from decimal import Decimal

import click
from rich.table import Table

from ..errors import EditpipeError, JobLost, JobNotFound
from ..ledger import usd
from ..recovery import describe, lost_jobs, rebuild, stored_job
from ..settings import Settings
from ..state import JobStatus, State
from ..storage import open_storage
from .output import EXIT_FAILED_RUNS, EXIT_OK, console

LOST = "lost"


def lost_message(job_id: str, root: str) -> str:
    return (f"Redis has no record of job {job_id} any more: its state was lost (Redis restarted without "
            f"persistence, was flushed, or was replaced). Its outputs in storage are kept. Rebuild it and run what "
            f"has no output: editpipe resume {job_id} --output {root}")


def status_missing(settings: Settings, job_id: str, missing: JobNotFound, output: str | None,
                   as_json: bool) -> int:
    """``editpipe status JOB`` for a job Redis does not have; returns the exit code."""
    if output is None:
        if not isinstance(missing, JobLost):
            raise missing
        _show({"job_id": job_id, "status": LOST, "output": None, "error": str(missing)}, as_json,
              f"Job {job_id}: {LOST}\n  {missing}")
        return EXIT_FAILED_RUNS
    stored = stored_job(open_storage(output, settings), job_id)
    if stored is None:
        raise JobNotFound(f"no job {job_id!r} in Redis, nor under {output}")
    if stored.open:
        message = lost_message(job_id, stored.root)
        _show({"job_id": job_id, "status": LOST, "output": stored.root, "error": message}, as_json,
              f"Job {job_id}: {LOST}\n  {message}")
        return EXIT_FAILED_RUNS
    summary = dict(stored.summary or {}, source="storage")
    counts = summary.get("counts") or {}
    _show(summary, as_json,
          f"Job {job_id}: {summary.get('status')} (from its records in storage: Redis no longer has it)\n"
          f"  runs: {counts.get('planned')} planned, {counts.get('succeeded')} succeeded, "
          f"{counts.get('skipped')} skipped, {counts.get('failed')} failed\n"
          f"  spent: ${summary.get('spent_usd')}\n  results: {stored.root}/jobs/{job_id}/")
    return EXIT_OK


def _show(data: dict, as_json: bool, text: str) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        console.print(text, markup=False)


def jobs_table(state: State, recent: list[JobStatus], outputs: tuple[str, ...], settings: Settings) -> None:
    """``editpipe jobs``: Redis's recent jobs, and the lost jobs of each ``--output`` root."""
    table = Table()
    for col in ("job", "status", "planned", "ok", "failed", "spent", "created"):
        table.add_column(col)
    for st in recent:
        table.add_row(st.id, st.status, str(st.total), str(st.succeeded + st.skipped), str(st.failed),
                      f"${usd(st.spent_usd)}", st.created_at)
    lost = [(root, mark) for root in outputs for mark in lost_jobs(open_storage(root, settings), state.jobs)]
    for _, mark in lost:
        table.add_row(mark.job_id, LOST, str(mark.runs), "?", "?", "?", mark.created_at)
    console.print(table)
    for root, mark in lost:
        console.print(f"{mark.job_id}: {LOST}. {lost_message(mark.job_id, root)}", markup=False)
    if not outputs:
        epoch = state.jobs.epoch()
        since = (f"Redis's records begin {epoch:%Y-%m-%d %H:%M:%S} UTC" if epoch is not None
                 else "Redis holds no jobs (it is new, or lost its data)")
        console.print(f"{since}; jobs it lost are listed from storage with --output ROOT.", markup=False)


def resume_from_storage(settings: Settings, state: State, job_id: str, output: str | None,
                        budget: Decimal | None, enqueue_runs, finalize) -> bool:
    """``editpipe resume JOB --output ROOT`` for a job Redis lost: rebuild it from storage and
    send what has no output to the workers. Returns whether any run was sent."""
    if output is None:
        missing = state.jobs.missing(job_id)
        hint = "" if isinstance(missing, JobLost) else (
            "; if Redis lost it, give its output root to rebuild it from storage: "
            f"editpipe resume {job_id} --output ROOT")
        raise EditpipeError(f"{missing}{hint}")
    rebuilt = rebuild(settings, state, open_storage(output, settings), job_id, enqueue_runs=enqueue_runs,
                      finalize=finalize, budget_usd=budget)
    for line in describe(rebuilt):
        console.print(line, markup=False)
    return bool(rebuilt.left)
