"""``editpipe review JOB``: decisions on a finished job's outputs, on a page or from the command line.

Without flags it serves the job's review page (``review_page``) and prints its URL.

``--approve-passing`` approves every run this job made whose checks all passed and that
nobody has decided on yet; ``--approve RUN_KEY...`` and ``--reject RUN_KEY... --reason
TEXT`` decide on the runs named (a full run key, or a prefix only it has). Decisions are
appended to ``jobs/<job_id>/review.jsonl`` (``pipeline.review``): a request with one run
that cannot be decided on (unknown, no output) writes nothing and exits 1.
"""

from __future__ import annotations

import getpass
import socket

import click

from ..errors import ReviewError
from ..publish import job_spec
from ..review import (
    append_decisions,
    job_results,
    make_decisions,
    passing_waiting,
    read_decisions,
    review_states,
)
from ..settings import Settings
from .job_root import job_storage
from .output import console, err


def _asked_checks(storage, job_id: str) -> list[str]:
    """The checks the job asks for (none for a job without a publish block)."""
    try:
        return [check.name for check in job_spec(storage, job_id).checks]
    except ReviewError:
        return []


def default_reviewer() -> str:
    """Who decides, when not told: the user at this machine."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command("review")
@click.argument("job_id")
@click.argument("run_keys", nargs=-1, metavar="[RUN_KEY]...")
@click.option("--approve-passing", is_flag=True,
              help="Approve every run of this job whose checks all passed and that nobody decided on yet.")
@click.option("--approve", "approve", is_flag=True, help="Approve the RUN_KEYs given.")
@click.option("--reject", "reject", is_flag=True, help="Reject the RUN_KEYs given (with --reason).")
@click.option("--reason", default="", help="Why (required with --reject).")
@click.option("--reviewer", default=None, help="Who decides (default: user@host).")
@click.option("--output", help="The job's output root (default: from Redis).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Where the page listens (without flags).")
@click.option("--port", default=0, help="The page's port (default: a free one).")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
def review_command(job_id: str, run_keys: tuple[str, ...], approve_passing: bool, approve: bool, reject: bool,
                   reason: str, reviewer: str | None, output: str | None, host: str, port: int,
                   open_browser: bool) -> None:
    """Review a finished job's outputs. Without flags: serve the review page (its URL is
    printed; Ctrl-C stops it). With flags, from the command line: approve or reject runs
    (RUN_KEY: a run key from results.jsonl or the report, or a prefix of it only one run has)."""
    chosen = [name for name, on in (("--approve-passing", approve_passing), ("--approve", approve),
                                    ("--reject", reject)) if on]
    if len(chosen) > 1:
        raise click.UsageError(f"one of --approve-passing, --approve, --reject at a time ({' and '.join(chosen)} given)")
    if not chosen:
        if run_keys:
            raise click.UsageError("RUN_KEYs go with --approve or --reject")
        from .review_page import serve_review_page

        serve_review_page(Settings.from_env(), job_id, output, reviewer or default_reviewer(), host=host, port=port,
                          open_browser=open_browser)
        return
    if approve_passing and run_keys:
        raise click.UsageError("--approve-passing takes no RUN_KEYs")
    if (approve or reject) and not run_keys:
        raise click.UsageError(f"{chosen[0]} needs at least one RUN_KEY")
    storage = job_storage(Settings.from_env(), job_id, output)
    results = job_results(storage, job_id)
    decided = read_decisions(storage, job_id)
    who = reviewer or default_reviewer()
    if approve_passing:
        keys = [r.run_key for r in passing_waiting(results, decided, _asked_checks(storage, job_id))]
        decisions = make_decisions(results, job_id, [(k, "approve") for k in keys], reason=reason, reviewer=who)
    else:
        verdict = "approve" if approve else "reject"
        decisions = make_decisions(results, job_id, [(k, verdict) for k in run_keys], reason=reason, reviewer=who)
    append_decisions(storage, job_id, decisions)
    by_key = {r.run_key: r for r in results}
    for d in decisions:
        result = by_key[d.run_key]
        failed = [name for name, check in result.checks.items() if not check.get("passed")]
        note = f" (despite failed checks: {', '.join(failed)})" if d.decision == "approve" and failed else ""
        console.print(f"  {d.state} {d.run_key[:12]} {result.image_set}/{result.prompt}/v{result.variant}{note}",
                      markup=False)
        if note:
            err.print(f"editpipe: run {d.run_key[:12]} approved although {', '.join(failed)} failed", markup=False)
    states = review_states(results, {**decided, **{d.run_key: d for d in decisions}})
    counts = {name: sum(1 for s in states.values() if s == name) for name in ("approved", "rejected", "regenerate",
                                                                              "waiting")}
    console.print(f"{job_id}: {len(decisions)} decision(s) recorded in "
                  f"{storage.location(f'jobs/{job_id}/review.jsonl')}; "
                  + ", ".join(f"{n} {name}" for name, n in counts.items()), markup=False)
