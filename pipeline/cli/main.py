"""The ``editpipe`` command group and its job commands.

Exit codes (manifest.md): 0 every run succeeded or was skipped; 1 some runs failed;
2 the manifest or the settings are invalid (nothing was paid).
"""

from __future__ import annotations

import importlib
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.table import Table

from .. import logs
from ..errors import EditpipeError, JobNotFound, ManifestError, SettingsError
from ..state import UNAVAILABLE, State
from ..ledger import usd
from ..settings import Settings
from .output import (
    EXIT_FAILED_RUNS,
    EXIT_INVALID,
    EXIT_OK,
    console,
    err,
    finish,
    print_skipped_rows,
    print_summary,
)

if TYPE_CHECKING:
    from ..size import Size
    from ..submission import Finalize


class EditpipeGroup(click.Group):
    """Turns our errors into a one-line message and the documented exit code, and loads the
    commands of ``LAZY_COMMANDS`` when they are used (or listed by ``--help``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY_COMMANDS and name not in self.commands:
            module, attr = LAZY_COMMANDS[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ManifestError as exc:
            for issue in exc.issues:
                err.print(str(issue), markup=False)
            err.print(f"{len(exc.issues)} error(s); nothing was submitted.", markup=False)
            sys.exit(EXIT_INVALID)
        except SettingsError as exc:
            err.print(f"editpipe: {exc}", markup=False)
            sys.exit(EXIT_INVALID)
        except EditpipeError as exc:
            err.print(f"editpipe: {exc}", markup=False)
            sys.exit(EXIT_FAILED_RUNS)
        except UNAVAILABLE as exc:
            # Past the state layer's ride-out: a plain line, not a traceback.
            err.print(f"editpipe: Redis is not answering ({exc}); nothing more was done", markup=False)
            sys.exit(EXIT_FAILED_RUNS)


def _settings() -> Settings:
    return Settings.from_env()


def _state(settings: Settings) -> State:
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: the distributed commands need the Redis the workers use")
    # Said once as Redis stops answering, once as it answers again (the commands wait meanwhile).
    return State.from_url(settings.redis_url, report=lambda message: err.print(message, markup=False))


@click.group(cls=EditpipeGroup)
@click.version_option(package_name="editpipe")
def main() -> None:
    """editpipe: YAML manifests in, paid image edits, results and an exact cost ledger out."""
    try:
        settings: Settings | None = Settings.from_env()
    except SettingsError:
        settings = None  # the command that needs them says what is wrong
    # JSON lines from INFO up for a log pipeline; in text, only warnings and errors reach the
    # terminal, as before (the command's own output says the rest).
    logs.configure(settings, level=logging.INFO, text_level=logging.WARNING)
    if settings is not None and settings.log_format == "json":
        err.file = logs.LineLog(logging.getLogger("pipeline.cli"))  # messages and progress, as JSON lines


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
def validate(manifest: Path) -> None:
    """Check a manifest; print every error as file:line:col: field: message."""
    from ..submission import prepare

    prepared = prepare(manifest, _settings())
    console.print(f"{manifest}: ok, {len(prepared.plan.runs)} runs", markup=False)


@main.command()
def schema() -> None:
    """Print the manifest's JSON Schema (for editors)."""
    from ..manifest import manifest_json_schema

    click.echo(json.dumps(manifest_json_schema(), indent=2))


FORCE = click.option("--force", is_flag=True, help="Pay again for runs whose output already exists.")


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--limit", default=50, show_default=True, help="Rows of the run table to show.")
@FORCE
def plan(manifest: Path, limit: int, force: bool) -> None:
    """Show the runs a manifest expands to, which are already done, and what the new ones
    would cost. Pays nothing."""
    from ..submission import prepare

    def counted(size: Size) -> None:
        cost = f"${usd(size.usd)}" if size.usd is not None else "unknown"
        console.print(f"{manifest}: {size.runs:,} runs, estimated {cost} if all are new (counted before "
                      "planning them)", markup=False)

    prepared = prepare(manifest, _settings(), force=force, counted=counted)
    runs = prepared.plan.runs
    table = Table(title=f"{prepared.manifest.name}: {len(runs)} runs")
    option_names = list(runs[0].options) if runs else []
    for col in ("#", "image set", "prompt", "v", *option_names, "output", "run key", "state"):
        table.add_column(col, overflow="fold")
    for run in runs[:limit]:
        state = "done" if prepared.done.done_at(run.index) else "new"
        table.add_row(str(run.index), run.image_set, run.prompt_id, str(run.variant),
                      *(run.options.get(name, "") for name in option_names), run.output_key, run.run_key[:10], state)
    console.print(table)
    if len(runs) > limit:
        console.print(f"… and {len(runs) - limit} more", markup=False)
    budget = prepared.manifest.budget_usd
    print_skipped_rows(prepared)
    changes = prepared.changes
    console.print(f"Runs: {len(runs)} planned: {changes.new} new, {changes.changed} changed, "
                  f"{changes.unchanged} already done (skipped at $0)", markup=False)
    console.print(f"Estimated cost: ${usd(prepared.estimated_usd)} for {prepared.new_runs} new runs", markup=False)
    if budget is not None:
        verdict = "within" if prepared.estimated_usd <= budget else "OVER"
        console.print(f"Budget: ${usd(budget)} ({verdict} budget)", markup=False)


def _enqueuer(settings: Settings):
    from workers.celery_app import job_enqueuer

    return job_enqueuer(settings)


def _run_enqueuer(settings: Settings):
    from workers.celery_app import runs_enqueuer

    return runs_enqueuer(settings)


def _finalize() -> Finalize:
    from ..report import finalize_job

    return finalize_job


@main.command()
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--simulate", is_flag=True, help="Run against the built-in API simulator (nothing is paid).")
@click.option("--workers", default=1, show_default=True, help="Worker processes to start.")
@click.option("--concurrency", default=6, show_default=True, help="Pool size of each worker process.")
@FORCE
def run(manifest: Path, simulate: bool, workers: int, concurrency: int, force: bool) -> None:
    """Run a manifest start to finish on this machine (its own Redis, workers, progress bar).

    Killed or stopped with Ctrl-C, the same command continues the same job: predictions
    already submitted are collected, not paid again. Ctrl-C once stops cleanly (no new
    submits, those in flight collected first); twice stops at once."""
    from .run import run_manifest

    settings = _settings()
    if not simulate:
        settings.require_api_key()
    sys.exit(run_manifest(manifest, settings, simulate=simulate, workers=workers, concurrency=concurrency,
                          force=force))


@main.command("submit")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--wait", is_flag=True, help="Follow the job (a bar, or plain lines off a terminal); exit like `run`.")
@FORCE
def submit_cmd(manifest: Path, wait: bool, force: bool) -> None:
    """Submit a manifest to the workers (`celery -A workers worker`); prints the job id."""
    from ..submission import prepare, submit

    settings = _settings()
    state = _state(settings)
    prepared = prepare(manifest, settings, force=force, state=state)
    print_skipped_rows(prepared)
    job_id = submit(prepared, state, _enqueuer(settings), finalize=_finalize())
    click.echo(job_id)
    if wait:
        sys.exit(finish(state, job_id))


@main.command()
@click.argument("job_id")
@click.option("--output", help="The job's output root: what storage holds of a job Redis no longer has.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def status(job_id: str, output: str | None, as_json: bool) -> None:
    """Show one job's progress, counts and spend. A job whose state Redis lost is reported
    as lost (exit 1), with how to rebuild it."""
    settings = _settings()
    try:
        st = _state(settings).jobs.status(job_id)
    except JobNotFound as missing:
        from .lost import status_missing

        sys.exit(status_missing(settings, job_id, missing, output, as_json))
    if as_json:
        click.echo(json.dumps(st.to_dict(), indent=2))
    else:
        print_summary(st)


@main.command()
@click.option("--limit", default=20, show_default=True)
@click.option("--output", "outputs", multiple=True,
              help="An output root whose jobs Redis lost are listed too (read from storage); repeatable.")
def jobs(limit: int, outputs: tuple[str, ...]) -> None:
    """List recent jobs, and with --output the jobs Redis lost under that root."""
    from .lost import jobs_table

    settings = _settings()
    state = _state(settings)
    jobs_table(state, state.jobs.recent(limit), outputs, settings)


@main.command()
@click.argument("job_id")
def cancel(job_id: str) -> None:
    """Stop submitting a job's runs; predictions already running still finish and are collected."""
    st = _state(_settings()).jobs.cancel(job_id)
    console.print(f"{job_id}: cancel requested ({st.finished}/{st.total} runs finished)", markup=False)


@main.command()
@click.argument("job_id")
@click.option("--budget-usd", type=str, default=None,
              help="A new budget for the whole job (what it spent before counts).")
@click.option("--output", help="The job's output root: rebuilds a job whose state Redis lost from storage.")
@click.option("--wait", is_flag=True, help="Follow the job (a bar, or plain lines off a terminal); exit like `run`.")
def resume(job_id: str, budget_usd: str | None, output: str | None, wait: bool) -> None:
    """Run again what a finished job did not finish (transient failures, cancelled,
    budget-exhausted, lost); finished runs are not touched. A job Redis lost is rebuilt from
    its output root (--output) and runs only what has no output."""
    from decimal import Decimal, InvalidOperation

    from ..storage import open_storage
    from ..submission import resume as resume_job

    settings = _settings()
    state = _state(settings)
    try:
        budget = Decimal(budget_usd) if budget_usd is not None else None
    except InvalidOperation:
        raise SettingsError(f"--budget-usd must be a decimal amount, got {budget_usd!r}") from None
    if not state.jobs.known(job_id):
        from .lost import resume_from_storage

        sent = resume_from_storage(settings, state, job_id, output, budget, _run_enqueuer(settings), _finalize())
    else:
        storage = open_storage(state.jobs.output_root(job_id), settings)
        indices = resume_job(state, job_id, _run_enqueuer(settings), budget_usd=budget, storage=storage)
        console.print(f"{job_id}: {len(indices)} runs enqueued again", markup=False)
        sent = bool(indices)
    if wait and sent:
        sys.exit(finish(state, job_id))


def _output_roots(settings: Settings, outputs: tuple[str, ...]) -> list[str]:
    if outputs:
        return list(outputs)
    if not settings.redis_url:
        raise SettingsError("name an output root with --output (or set REDIS_URL to use those of known jobs)")
    return sorted({st.output for st in _state(settings).jobs.recent(10_000)})


@main.command()
@click.option("--job", "job_id", help="Only this job.")
@click.option("--day", help="Only charges of this UTC day (YYYY-MM-DD).")
@click.option("--schedule", help="Only jobs started by this schedule.")
@click.option("--output", "outputs", multiple=True, help="Output root(s) to read (default: those of known jobs).")
@click.option("--json", "as_json", is_flag=True)
def ledger(job_id: str | None, day: str | None, schedule: str | None, outputs: tuple[str, ...], as_json: bool) -> None:
    """Totals from the ledger files in storage (the record), per job: settled (confirmed or
    settled against the bill) and unsettled (lost submits still booked at an estimate;
    `editpipe reconcile JOB --settle` settles them)."""
    from decimal import Decimal

    from ..ledger import read_ledgers
    from ..storage import open_storage

    settings = _settings()
    rows = []
    for root in _output_roots(settings, outputs):
        for book in read_ledgers(open_storage(root, settings), job_id):
            if schedule and book.schedule != schedule:
                continue
            lines = [line for line in book.lines if day is None or line.charged_at.startswith(day)]
            if not lines:
                continue
            rows.append({
                "job_id": book.job_id, "schedule": book.schedule or None, "output": root,
                "lines": len(lines),
                "settled_usd": usd(book.total(day, settled=True)),
                "unsettled_usd": usd(book.total(day, settled=False)),
                "unsettled_lines": sum(1 for line in lines if not line.kind.settled),
                "total_usd": usd(book.total(day)),
            })
    total = sum((Decimal(r["total_usd"]) for r in rows), Decimal("0"))
    unsettled = sum((Decimal(r["unsettled_usd"]) for r in rows), Decimal("0"))
    if as_json:
        click.echo(json.dumps({"jobs": rows, "settled_usd": usd(total - unsettled), "unsettled_usd": usd(unsettled),
                               "total_usd": usd(total)}, indent=2))
        return
    table = Table()
    for col in ("job", "schedule", "lines", "settled", "unsettled", "total"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["job_id"], r["schedule"] or "", str(r["lines"]), f"${r['settled_usd']}",
                      f"${r['unsettled_usd']} ({r['unsettled_lines']} lines)" if r["unsettled_lines"] else "$0.00",
                      f"${r['total_usd']}")
    console.print(table)
    console.print(f"Total: ${usd(total)} (settled ${usd(total - unsettled)}, unsettled estimates ${usd(unsettled)})",
                  markup=False)


@main.command()
@click.argument("job_id")
@click.option("--output", help="The job's output root (default: from Redis).")
@click.option("--settle", is_flag=True, help="Replace each unconfirmed_submit line by what the bill says.")
@click.option("--json", "as_json", is_flag=True)
def reconcile(job_id: str, output: str | None, settle: bool, as_json: bool) -> None:
    """Check a finished job's ledger against the provider's billing records; list every
    difference and the totals (ledger vs bill). With --settle, write the lost submits found on
    the bill into the job's ledger.jsonl. Exit 0 when no difference is left, 1 otherwise."""
    from ..provider import WaveSpeedClient
    from ..reconcile import reconcile as check
    from ..reconcile import settle as settle_ledger
    from ..storage import open_storage

    settings = _settings()
    root = output or _state(settings).jobs.status(job_id).output
    storage = open_storage(root, settings)
    settled = None
    with WaveSpeedClient(settings.base_url, settings.require_api_key()) as client:
        found = check(storage, job_id, client)
        if settle:
            settled = settle_ledger(storage, found, in_flight_s=settings.request_timeout_s)
            if settled.replaced:
                found = check(storage, job_id, client)
    if as_json:
        out = found.to_dict()
        if settled is not None:
            out["settled"] = {"replaced": [new.to_dict() for _, new in settled.replaced], "by_order": settled.by_order,
                              "unbooked": [f.prediction.id for f in settled.unbooked]}
        click.echo(json.dumps(out, indent=2))
    else:
        if settled is not None:
            console.print(f"{job_id}: settled {len(settled.replaced)} unconfirmed line(s)"
                          + (f" ({settled.by_order} paired by order, not by time)" if settled.by_order else "")
                          + (f"; {len(settled.unbooked)} billed prediction(s) beyond the job's lost submits "
                             "left unbooked" if settled.unbooked else ""), markup=False)
            for old, new in settled.replaced:
                console.print(f"  run {new.run_key}: ${usd(old.cost_usd)} estimate -> {new.kind.value} "
                              f"${usd(new.cost_usd)} (prediction {new.prediction_id or 'none'})", markup=False)
        console.print(f"{job_id}: {len(found.lines)} ledger lines checked, {len(found.differences)} difference(s); "
                      f"ledger ${usd(found.ledger_usd)}, bill ${usd(found.bill_usd)}", markup=False)
        for d in found.differences:
            amounts = "".join(f", {name} ${usd(value)}" for name, value in
                              (("ledger", d.ledger_usd), ("billed", d.billed_usd)) if value is not None)
            console.print(f"  {d.kind}: run {d.run_key or '-'} prediction {d.prediction_id or '-'}: {d.detail}{amounts}",
                          markup=False)
    sys.exit(EXIT_OK if not found.differences else EXIT_FAILED_RUNS)


@main.command("webhook-server")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, as behind a proxy or in compose).")
@click.option("--port", default=8780, show_default=True)
@click.option("--metrics", is_flag=True, help="Also serve the fleet's Prometheus metrics at /metrics.")
def webhook_server(host: str, port: int, metrics: bool) -> None:
    """Receive the provider's signed completion POSTs (set EDITPIPE_WEBHOOK_URL to this
    server's public /webhook URL, and EDITPIPE_WEBHOOK_SECRET, for workers and server alike;
    the server also needs WAVESPEED_API_KEY, to fetch the account's webhook secret and to
    read each completed prediction from the provider)."""
    from aiohttp import web

    from workers.celery_app import collect_sender

    from ..webhooks import make_app

    settings = _settings()
    # aiohttp's "Running on …" lines: a log line in the json format, printed otherwise.
    say = logging.getLogger("pipeline.webhooks").info if settings.log_format == "json" else print
    web.run_app(make_app(settings, collect_sender(settings), metrics), host=host, port=port, access_log=None,
                print=say)


# Commands whose modules are imported when the command is asked for, so that every command
# (a refusal of a hopeless manifest included) starts without the others' imports (imagehash
# and numpy for the checks, prometheus_client, aiohttp's server, the simulator).
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "simulate-api": ("pipeline.simulator.cli", "simulate_api"),
    "report": ("pipeline.cli.report", "report_command"),
    "review": ("pipeline.cli.review", "review_command"),
    "regenerate": ("pipeline.cli.regenerate", "regenerate_command"),
    "publish": ("pipeline.cli.publish", "publish_command"),
    "schedules": ("pipeline.cli.schedules", "schedules"),
    "metrics-server": ("pipeline.cli.metrics_server", "metrics_server"),
    "top": ("pipeline.cli.top", "top"),
}
