"""``editpipe publish JOB [--dry-run]``: copy a finished job's approved outputs to its ``publish.to``.

Idempotent (``pipeline.publish``): a second call copies nothing, and a run approved since the
last call is published by the next. ``--dry-run`` prints what would be copied and writes
nothing. Exit 0 when every copy it tried was made, 1 otherwise (what was copied is recorded).
"""

from __future__ import annotations

import click

from ..publish import Outcome, publish_job
from ..settings import Settings
from ..storage import Storage, open_storage
from .job_root import job_storage
from .output import console

HELD_SHOWN = 20


@click.command("publish")
@click.argument("job_id")
@click.option("--dry-run", is_flag=True, help="Print what would be copied; copy and write nothing.")
@click.option("--output", help="The job's output root (default: from Redis).")
def publish_command(job_id: str, dry_run: bool, output: str | None) -> None:
    """Copy a finished job's approved outputs (with review: auto, those whose checks passed)
    to its publish.to, each with a sidecar naming the job, run and prediction; record them in
    jobs/JOB/published.jsonl. Outputs published before are not copied again."""
    settings = Settings.from_env()
    storage = job_storage(settings, job_id, output)
    opened: dict[str, Storage] = {}

    def open_root(root: str) -> Storage:
        if root not in opened:
            opened[root] = open_storage(root, settings)
        return opened[root]

    print_outcome(publish_job(storage, job_id, open_root, dry_run=dry_run))


def print_outcome(outcome: Outcome) -> None:
    verb = "would copy" if outcome.dry_run else "copied"
    for item in outcome.copied:
        console.print(f"  {verb} {item.run_key[:12]} {item.source} -> {item.destination}", markup=False)
    held = [item for item in outcome.items if item.action == "held"]
    for item in held[:HELD_SHOWN]:
        console.print(f"  held {item.run_key[:12]} {item.source}: {item.reason}", markup=False)
    if len(held) > HELD_SHOWN:
        console.print(f"  … and {len(held) - HELD_SHOWN} more held", markup=False)
    console.print(
        f"{outcome.job_id}: {len(outcome.copied)} {verb} to {outcome.spec.to}, {outcome.count('already')} published "
        f"before, {len(held)} held back" + (" (dry run: nothing was written)" if outcome.dry_run else ""),
        markup=False)
