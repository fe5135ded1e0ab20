"""``editpipe regenerate JOB --rejected``: run rejected runs again, each as a new variant.

Every run whose latest review decision is ``reject`` (or ``regenerate``, asked on the page)
and that was not regenerated before gets a new variant in the same job, paid like any run
(the job's budget, its ledger) and handed to the workers (``pipeline.regenerate``). With
RUN_KEYs and ``--reason``, those runs are marked ``regenerate`` in ``review.jsonl`` first.
"""

from __future__ import annotations

import sys

import click

from ..errors import SettingsError
from ..ledger import usd
from ..modelspec import load_model_specs
from ..regenerate import price_of, regenerate
from ..review import append_decisions, make_decisions, read_decisions
from ..settings import Settings
from ..state import State
from ..storage import open_storage
from .output import console, finish
from .review import default_reviewer

ASKED = ("rejected", "regenerate")  # the review states a run is regenerated from


@click.command("regenerate")
@click.argument("job_id")
@click.argument("run_keys", nargs=-1, metavar="[RUN_KEY]...")
@click.option("--rejected", is_flag=True, help="Every run whose latest decision is reject (or regenerate).")
@click.option("--reason", default="", help="Why the RUN_KEYs given are made again (recorded as their decision).")
@click.option("--reviewer", default=None, help="Who asks (default: user@host).")
@click.option("--wait", is_flag=True, help="Follow the job until the new runs are done; exit like `run`.")
def regenerate_command(job_id: str, run_keys: tuple[str, ...], rejected: bool, reason: str, reviewer: str | None,
                       wait: bool) -> None:
    """Run rejected runs of a job again, each as a new variant (paid, under the job's budget);
    the new outputs join the job's review."""
    if rejected == bool(run_keys):
        raise click.UsageError("give --rejected, or the RUN_KEYs to regenerate (with --reason)")
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: regenerated runs are run by the workers of that Redis")
    state = State.from_url(settings.redis_url)
    storage = open_storage(state.jobs.status(job_id).output, settings)
    decided = read_decisions(storage, job_id)
    if rejected:
        keys = [key for key, d in decided.items() if d.state in ASKED]
    else:
        from ..records import RunResult

        results = [RunResult.from_dict(r) for r in state.runs.results(job_id)]
        asked = make_decisions(results, job_id, [(key, "regenerate") for key in run_keys], reason=reason,
                               reviewer=reviewer or default_reviewer())
        append_decisions(storage, job_id, asked)
        keys = [d.run_key for d in asked]
    if not keys:
        console.print(f"{job_id}: no rejected run to regenerate", markup=False)
        return
    from workers.celery_app import runs_enqueuer

    made = regenerate(state, storage, job_id, keys, runs_enqueuer(settings))
    planned = {run.run_key: run for run in state.runs.planned(job_id)}
    for r in made:
        what = "regenerated before as" if r.before else "regenerating as"
        console.print(f"  {r.source[:12]} {what} {r.run_key[:12]} (run #{r.index + 1}, v{r.variant}) -> {r.output}",
                      markup=False)
    new = [r for r in made if not r.before]
    cost = price_of(new, planned, load_model_specs(settings.models_dir))
    status = state.jobs.status(job_id)
    left = f"; ${usd(status.budget_usd - status.spent_usd)} of its ${usd(status.budget_usd)} budget left" \
        if status.budget_usd is not None else ""
    console.print(f"{job_id}: {len(new)} run(s) regenerating, estimated ${usd(cost)}{left}", markup=False)
    if wait and new:
        sys.exit(finish(state, job_id))
