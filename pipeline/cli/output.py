"""What every command prints: the consoles, a job's progress (``progress.py``), its summary,
its failures, and the exit code a finished job gives (0 every run succeeded or was skipped, 1 otherwise)."""

from __future__ import annotations

from rich.console import Console

from ..state import JobStatus, State
from ..ledger import usd
from ..records import JobState, RunResult
from ..manifest.publish import PUBLISH_MESSAGE

# No emoji codes: an issue at line 100, col 3 would print ":100:" as 💯.
console = Console(stderr=False, highlight=False, soft_wrap=True, emoji=False)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

EXIT_OK, EXIT_FAILED_RUNS, EXIT_INVALID = 0, 1, 2


def exit_code(status: JobStatus) -> int:
    return EXIT_OK if status.failed == 0 and status.status == JobState.SUCCEEDED else EXIT_FAILED_RUNS


def print_skipped_rows(prepared, limit: int = 5) -> None:
    """Catalog rows left out under ``on_bad_row: skip``: a count and the first few."""
    rows = prepared.plan.skipped_rows
    if rows:
        err.print(f"{len(rows)} catalog row(s) skipped:", markup=False)
        for message in rows[:limit]:
            err.print(f"  {message}", markup=False)


def progress_follow(state: State, job_id: str) -> JobStatus:
    """Follow a job until it is finalized, on stderr: a progress bar on a terminal, one plain
    line every few seconds when stdout or stderr is not one (cron, CI, a log file)."""
    from .progress import follow_job, interactive

    return follow_job(state, job_id, err, bar=interactive(console, err))


def print_summary(status: JobStatus) -> None:
    console.print(
        f"Job {status.id}: {status.status}\n"
        f"  runs: {status.total} planned, {status.succeeded} succeeded, {status.skipped} skipped, {status.failed} failed\n"
        f"  spent: ${usd(status.spent_usd)}"
        + (f" of ${usd(status.budget_usd)} budget" if status.budget_usd is not None else "")
        + f"\n  results: {status.output}/jobs/{status.id}/  (report.html, results.jsonl, ledger.jsonl)",
        markup=False,
    )
    if status.error:
        console.print(f"  error: {status.error}", markup=False)


def print_failures(state: State, job_id: str, limit: int = 10) -> None:
    failed = 0
    for r in map(RunResult.from_dict, state.runs.iter_results(job_id)):
        if r.failed:
            failed += 1
            if failed <= limit:
                console.print(f"  failed {r.image_set}/{r.prompt}/v{r.variant}: {r.error}", markup=False)
    if failed > limit:
        console.print(f"  … {failed - limit} more in results.jsonl", markup=False)


def finish(state: State, job_id: str) -> int:
    """Follow a job to its end, print its summary and failures; the exit code it gives."""
    status = progress_follow(state, job_id)
    print_summary(status)
    print_failures(state, job_id)
    published = state.jobs.field(job_id, PUBLISH_MESSAGE)
    if published:
        console.print(f"  publish: {published}", markup=False)
    return exit_code(status)
