"""Submission: a manifest file becomes a planned, recorded, enqueued job.

Everything that can be wrong with the input is found here, before anything is paid:
the manifest is validated and planned in full, and the output root is checked writable,
before the first run is enqueued.

What is stored is never paid for again: a run whose key the output root's index lists is
skipped, and so is one whose output an open job left unindexed (its Redis lost, or the job
killed: ``look_up_done``). A submitted job is marked open in storage until its whole index
is written (``run_index.OpenMark``), and a resumed one again.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path

from .catalog import Sources
from .errors import EditpipeError
from .layout import job_file
from .ledger import utc_now
from .manifest import Manifest, load_manifest
from .manifest.publish import record_field
from .modelspec import ModelSpec, load_model_specs
from .plan import Plan, plan_runs
from .records import RunResult, RunStatus, skipped_result
from .run_index import (
    DoneLookup,
    DoneRuns,
    OpenMark,
    close_mark,
    find_by_sidecars,
    fingerprint,
    mark_open,
    open_marks,
    read_index,
    read_mark,
    read_unwritten,
    write_recovered,
)
from .settings import Settings
from .size import Size, size_of
from .state import UNAVAILABLE, Jobs, JobStatus, State, new_job_id
from .storage import Storage, open_storage, s3_object_etag


# Writes a job's records and report and sets its final status (``report.finalize_job``).
Finalize = Callable[[State, Storage, str], object]


@dataclass(frozen=True)
class RunChanges:
    """How a plan's runs compare with what its output root already holds.

    ``unchanged``: done before (same run key), skipped at $0. ``changed``: its output key
    was made before from another run key (the inputs, prompt or options changed). ``new``:
    nothing was ever made at its output key.
    """

    new: int
    changed: int
    unchanged: int

    def fields(self) -> dict[str, int]:
        """As stored in the job's record (``state.Jobs``)."""
        return {"runs_new": self.new, "runs_changed": self.changed, "runs_unchanged": self.unchanged}


@dataclass(frozen=True)
class Prepared:
    manifest: Manifest
    plan: Plan
    specs: dict[str, ModelSpec]
    storage: Storage
    # The runs an earlier job already made an output for (skipped at $0), and where.
    done: DoneRuns
    changes: RunChanges
    estimated_usd: Decimal
    force: bool = False

    @property
    def new_runs(self) -> int:
        return len(self.plan.runs) - len(self.done)


def look_up_done(
    storage: Storage, plan: Plan, *, force: bool = False, unwritten: Iterable[tuple[str, str]] = (),
    jobs: Jobs | None = None,
) -> tuple[DoneRuns, RunChanges]:
    """Runs of the plan whose run key has an output under this output root (from any job),
    and how the rest compare with what was made before.

    The output root's run index (``run_index.py``) answers for the whole plan: no object is
    read per run, and the two are joined in bounded memory (``run_index.DoneLookup``).
    ``unwritten``: index lines not in storage yet (``run_index.read_unwritten``). With
    ``force`` nothing counts as done.

    An open job (``run_index.OpenMark``) that Redis (``jobs``) does not know may have left
    outputs the index does not list: then the sidecar of every run not found otherwise is
    read (``find_by_sidecars``: one GET each, in parallel), and what is found is written to
    the index, and the job's mark closed when this plan has exactly its runs. Without
    ``jobs`` (``editpipe plan``, which asks no Redis) every open job counts, and nothing is
    written.
    """
    done = DoneRuns(plan)
    with DoneLookup() as lookup:
        unwritten = list(unwritten)
        lookup.add(lambda: itertools.chain(read_index(storage), unwritten))
        changed = lookup.look_up(plan, None if force else done) if lookup.lines else 0
    if not force:
        recovered = _found_by_sidecars(storage, plan, done, jobs)
        if recovered:
            for index, (run_key, own) in enumerate(plan.keys_and_outputs()):
                if run_key in recovered:
                    done.add(index, recovered[run_key], own)
    unchanged = len(done)
    return done, RunChanges(new=len(plan.runs) - unchanged - changed, changed=changed, unchanged=unchanged)


def _found_by_sidecars(storage: Storage, plan: Plan, done: DoneRuns, jobs: Jobs | None) -> dict[str, str]:
    """Outputs of the plan's runs that open jobs Redis lost made and the index does not list."""
    lost = [mark for mark in open_marks(storage) if jobs is None or not jobs.known(mark.job_id)]
    if not lost:
        return {}
    recovered = find_by_sidecars(storage, [pair for index, pair in enumerate(plan.keys_and_outputs())
                                           if not done.done_at(index)])
    if jobs is not None:
        write_recovered(storage, recovered)
        ours = fingerprint(plan.keys())
        for mark in lost:
            # Every output that job could make had this plan's run key, and was looked for.
            if mark.fingerprint == ours and not jobs.known(mark.job_id):
                close_mark(storage, mark.job_id)
    return recovered


def prepare(path: Path, settings: Settings, *, force: bool = False, state: State | None = None,
            counted: Callable[[Size], None] | None = None) -> Prepared:
    """Load, validate and plan a manifest; raises ``ManifestError`` with every issue.

    ``counted`` is told the plan's size (by arithmetic: runs, cost) once the manifest is
    valid, before a run is built.

    Unless ``force``, runs already done under the same output root are found, and only the
    others are priced. With the workers' ``state``, that includes the outputs of jobs still
    running there whose index lines are not in storage yet (up to a batch each), and of jobs
    Redis lost (``look_up_done``).
    """
    specs = load_model_specs(settings.models_dir)
    manifest = load_manifest(path, specs, sources=Sources(settings), max_runs=settings.max_runs)
    if counted is not None:
        counted(size_of(manifest, specs))
    plan = plan_runs(manifest, specs, s3_etag=lambda uri: s3_object_etag(uri, settings))
    storage = open_storage(manifest.output, settings)
    # Redis before storage: a line that leaves Redis in between was written to storage first.
    unwritten = list(read_unwritten(state.index, storage.root)) if state is not None and not force else []
    done, changes = look_up_done(storage, plan, force=force, unwritten=unwritten,
                                 jobs=state.jobs if state is not None else None)
    return Prepared(
        manifest=manifest,
        plan=plan,
        specs=specs,
        storage=storage,
        done=done,
        changes=changes,
        estimated_usd=plan.cost_where(specs, done.done_at if done else None),
        force=force,
    )


def submit(
    prepared: Prepared,
    state: State,
    enqueue: Callable[[str], None],
    *,
    finalize: Finalize,
    budget_usd: Decimal | None = None,
    schedule: str = "",
    notify_url: str = "",
    extra: dict[str, str] | None = None,
) -> str:
    """Record the job (manifest copy in storage, runs in Redis), finish the runs already done
    as skipped, and enqueue the first chunk of the rest; a job with nothing left to run is
    handed to ``finalize`` instead.

    ``budget_usd`` (a schedule's budget, say) caps the job together with the manifest's own
    ``budget_usd``: the lower of the two applies. ``extra``: more fields for the job's record
    (``editpipe run`` records its plan's fingerprint, to find the job again after a kill).
    """
    manifest = prepared.manifest
    caps = [b for b in (manifest.budget_usd, budget_usd) if b is not None]
    job_id = new_job_id(manifest.name)
    prepared.storage.put_text(job_file(job_id, "manifest.yaml"), manifest.source_text, "application/yaml")
    mark = OpenMark(
        job_id=job_id,
        created_at=utc_now(),
        runs=len(prepared.plan.runs),
        fingerprint=fingerprint(prepared.plan.keys()),
        manifest_dir=str(manifest.base_dir),
        budget_usd=str(min(caps)) if caps else None,
        schedule=schedule,
        priority=max(1, manifest.priority),
        force=prepared.force,
    )
    state.jobs.create(
        job_id,
        name=manifest.name,
        output=prepared.storage.root,
        runs=prepared.plan.runs,
        total=len(prepared.plan.runs),
        estimated_usd=prepared.estimated_usd,
        budget_usd=min(caps) if caps else None,
        created_at=mark.created_at,
        schedule=schedule,
        notify_url=notify_url,
        # A job with priority p gets p runs handed out for each run of a priority-1 job.
        priority=mark.priority,
        extra={**prepared.changes.fields(), "open_mark": json.dumps(asdict(mark)), **record_field(manifest.publish),
               # Whose budget the job's is, for its budget alerts (``pipeline.alerts``).
               "budget_of": "schedule" if budget_usd is not None and min(caps) == budget_usd and schedule else "job",
               **(extra or {})},
    )
    # After Redis has the record: an open job that Redis does not know is one it lost.
    mark_open(prepared.storage, mark)
    last = finish_skipped(prepared, state, job_id)
    if last or not prepared.plan.runs:
        finalize(state, prepared.storage, job_id)
        state.finalized(job_id)
    else:
        enqueue(job_id)
    return job_id


def finish_skipped(prepared: Prepared, state: State, job_id: str) -> bool:
    """Finish as skipped the job's runs whose output already exists (``prepared.done``);
    True when one of them was the job's last run. A run finishes once, so a second call
    (``editpipe run`` continuing a job killed before it was handed to the workers) only
    finishes those the first did not reach."""
    if not prepared.done:
        return False
    done = prepared.done
    skipped = ((run.index, skipped_result(run, existing).to_dict()) for run in prepared.plan.runs
               if done.done_at(run.index) and (existing := done.output_of(run)) is not None)
    return state.runs.finish_many(job_id, RunStatus.SKIPPED, skipped)


def follow(
    state: State,
    job_id: str,
    on_progress: Callable[[JobStatus], None],
    interval_s: float = 0.5,
    timeout_s: float | None = None,
) -> JobStatus:
    """Report a job's progress until it is finalized (or ``timeout_s`` passes).

    Redis going away does not end it: the state layer rides out an outage of up to
    ``RIDE_OUT_S`` (and says once that Redis is not answering), and past that the loop keeps
    asking every ``interval_s`` until Redis answers or ``timeout_s`` passes.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        try:
            status = state.jobs.status(job_id)
        except UNAVAILABLE:
            if deadline is not None and time.monotonic() > deadline:
                raise
            time.sleep(interval_s)
            continue
        on_progress(status)
        if status.done or (deadline is not None and time.monotonic() > deadline):
            return status
        time.sleep(interval_s)


def resume(
    state: State,
    job_id: str,
    enqueue_runs: Callable[[str, list[int]], None],
    *,
    budget_usd: Decimal | None = None,
    chunk: int = 500,
    storage: Storage | None = None,
) -> list[int]:
    """Run again what a finished job did not finish: runs failed for a reason that can pass
    (transient errors, cancel, budget, a rejected key, a lost submit answer) and runs that
    never got a result. Succeeded and skipped runs, and runs the provider refused or failed,
    are left as they are. Returns the run indices enqueued.

    With the job's ``storage``, the job is marked open there again before anything is
    enqueued (its finalize closes the mark), so outputs it makes are found even if Redis
    loses it. A job Redis no longer has is rebuilt by ``pipeline.recovery`` instead."""
    status = state.jobs.status(job_id)
    if not status.done:
        raise EditpipeError(f"job {job_id} is still {status.status}: wait for it, or cancel it, then resume")
    indices = []
    finished = bytearray(status.total)  # a byte per planned run: a million-run job's results are streamed
    for result in map(RunResult.from_dict, state.runs.iter_results(job_id)):
        if 0 <= result.index < status.total:
            finished[result.index] = 1
        if result.failed and result.retryable:
            if state.runs.reopen(job_id, result.index):
                state.runs.forget_attempts(job_id, result.index)
                indices.append(result.index)
    indices += [i for i in range(status.total) if not finished[i]]
    indices.sort()
    if not indices:
        return []
    if storage is not None:
        reopen_mark(state, storage, job_id)
    state.jobs.reopen(job_id, budget_usd)
    for start in range(0, len(indices), chunk):
        enqueue_runs(job_id, indices[start : start + chunk])
    return indices


def reopen_mark(state: State, storage: Storage, job_id: str) -> None:
    """Mark a job open in storage again, as it was at its submit (kept in its record)."""
    if read_mark(storage, job_id) is not None:
        return
    recorded = state.jobs.field(job_id, "open_mark")
    if recorded:
        mark = OpenMark.from_dict(json.loads(recorded))
    else:  # a job submitted before marks were kept
        runs = sorted(state.runs.planned(job_id), key=lambda run: run.index)
        mark = OpenMark(job_id=job_id, created_at=utc_now(), runs=len(runs),
                        fingerprint=fingerprint(run.run_key for run in runs))
    mark_open(storage, mark)
