"""Submission: a manifest file becomes a planned, recorded, enqueued job.

Everything that can be wrong with the input is found here, before anything is paid:
the manifest is validated and planned in full, and the output root is checked writable,
before the first run is enqueued.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from .jobs import JobStatus, JobStore, new_job_id
from .ledger import utc_now
from .manifest import Manifest, load_manifest
from .modelspec import ModelSpec, load_model_specs
from .plan import Plan, plan_runs
from .report import finalize_job, job_prefix
from .settings import Settings
from .storage import Storage, open_storage, s3_object_etag


@dataclass(frozen=True)
class Prepared:
    manifest: Manifest
    plan: Plan
    specs: dict[str, ModelSpec]
    storage: Storage
    estimated_usd: Decimal


def prepare(path: Path, settings: Settings) -> Prepared:
    """Load, validate and plan a manifest; raises ``ManifestError`` with every issue."""
    specs = load_model_specs(settings.models_dir)
    manifest = load_manifest(path, specs)
    plan = plan_runs(manifest, specs, s3_etag=lambda uri: s3_object_etag(uri, settings))
    return Prepared(
        manifest=manifest,
        plan=plan,
        specs=specs,
        storage=open_storage(manifest.output, settings),
        estimated_usd=plan.estimated_cost(specs),
    )


def submit(prepared: Prepared, jobs: JobStore, enqueue: Callable[[str], None]) -> str:
    """Record the job (manifest copy in storage, runs in Redis) and enqueue its first chunk."""
    manifest = prepared.manifest
    job_id = new_job_id(manifest.name)
    prepared.storage.put_text(f"{job_prefix(job_id)}/manifest.yaml", manifest.source_text, "application/yaml")
    jobs.create(
        job_id,
        name=manifest.name,
        output=prepared.storage.root,
        runs=prepared.plan.runs,
        total=len(prepared.plan.runs),
        estimated_usd=prepared.estimated_usd,
        budget_usd=manifest.budget_usd,
        created_at=utc_now(),
    )
    if not prepared.plan.runs:
        finalize_job(jobs, prepared.storage, job_id)
    else:
        enqueue(job_id)
    return job_id


def follow(
    jobs: JobStore,
    job_id: str,
    on_progress: Callable[[JobStatus], None],
    interval_s: float = 0.5,
    timeout_s: float | None = None,
) -> JobStatus:
    """Report a job's progress until it is finalized (or ``timeout_s`` passes)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        status = jobs.status(job_id)
        on_progress(status)
        if status.done or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(interval_s)
