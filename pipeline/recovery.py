"""Recovery: a job whose Redis state was lost, found and rebuilt from what storage holds.

Redis holds a running job's state (its runs, their prediction ids, results and ledger
lines); storage holds its manifest (``jobs/<id>/manifest.yaml``), its open mark (from its
submit until its whole index is written: ``run_index.OpenMark``), each output with its
sidecar (prompt, inputs, options, prediction id, cost), and, once it was finalized, its
results and ledger. A job marked open that Redis does not know is lost (``lost_jobs``): Redis
restarted without persistence, was flushed or was replaced. ``rebuild`` makes it again under
the same id:

- the stored manifest is planned again (the same references give the same run keys), with
  the runs ``regenerate`` added to the job after it (``regenerate.with_added_runs``);
- a run whose output's sidecar names its run key is finished: succeeded, its ledger line
  rebuilt from the sidecar (prediction id, cost, time), when this job made it; skipped at $0
  when an earlier job did (unless the job was submitted with ``--force``); a finalized job's
  results and ledger lines are kept as they are, and a run that failed for good stays failed;
- every other run is run again, through the workers, and the job finalizes as any other
  (results, ledger, report, index whole).

What cannot be rebuilt: the predictions in flight at the loss (submitted, not yet stored)
are forgotten with their ids, so their runs are submitted again and those may be paid twice.
``Rebuilt.in_flight`` bounds them: at most the runs without output, and at most the account's
concurrency cap, which counts a prediction from its submit until its output is stored
(``execution``). A step still in progress at the loss that submits afterwards records its
prediction in the emptied Redis; the rebuild keeps those ids, so they are polled, not paid
again. The bound goes into the job's summary (``rebuilt.possibly_paid_twice``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from decimal import Decimal
from pathlib import Path

from .catalog import Sources
from .errors import EditpipeError, JobNotFound
from .layout import job_file, job_prefix, output_thumb_key, thumbs_prefix
from .ledger import LedgerEntry, LineKind, parse_ledger, to_micros, usd, utc_now
from .manifest import Manifest, parse_manifest
from .manifest.publish import record_field
from .modelspec import load_model_specs
from .plan import Plan, Run, plan_runs
from .records import RunResult, RunStatus, skipped_result
from .regenerate import with_added_runs
from .run_index import OpenMark, fingerprint, mark_open, open_marks, read_mark, read_sidecars
from .settings import Settings
from .state import Jobs, State
from .storage import Storage, s3_object_etag

LOST_ANSWER_KINDS = frozenset({LineKind.UNCONFIRMED_SUBMIT, LineKind.SETTLED, LineKind.NOT_BILLED})

Finalize = Callable[[State, Storage, str], object]
EnqueueRuns = Callable[[str, list[int]], None]
MANIFEST = "manifest.yaml"


@dataclass(frozen=True)
class StoredJob:
    """What storage holds of a job: its manifest always; its open mark while it may still
    make outputs; its summary (``job.json``) once it was finalized."""

    job_id: str
    root: str
    mark: OpenMark | None
    summary: dict | None

    @property
    def open(self) -> bool:
        return self.mark is not None or self.summary is None


def stored_job(storage: Storage, job_id: str) -> StoredJob | None:
    """The job under this output root, or None when it has no manifest there."""
    if not storage.exists(job_file(job_id, MANIFEST)):
        return None
    try:
        summary = json.loads(storage.get_text(job_file(job_id, "job.json")))
    except FileNotFoundError:
        summary = None
    return StoredJob(job_id, storage.root, read_mark(storage, job_id), summary)


def lost_jobs(storage: Storage, jobs: Jobs) -> list[OpenMark]:
    """Jobs marked open under this output root that Redis has no record of, oldest first."""
    return sorted((mark for mark in open_marks(storage) if not jobs.known(mark.job_id)),
                  key=lambda mark: mark.created_at)


@dataclass(frozen=True)
class Rebuilt:
    """What ``rebuild`` found and did. ``left``: the run indices sent to run. ``in_flight``:
    how many predictions may have been in flight at the loss, each possibly paid twice now.
    ``same_runs``: the manifest planned to the runs the job was submitted with (False: its
    references changed since, and runs with new keys are run again)."""

    job_id: str
    total: int
    succeeded: int
    skipped: int
    failed: int
    left: list[int]
    ledger_usd: Decimal
    in_flight: int
    same_runs: bool


def rebuild(
    settings: Settings,
    state: State,
    storage: Storage,
    job_id: str,
    *,
    enqueue_runs: EnqueueRuns,
    finalize: Finalize,
    budget_usd: Decimal | None = None,
    chunk: int = 500,
) -> Rebuilt:
    """Make a job Redis lost again from storage (see the module's docstring), and send what
    has no output to the workers (or finalize it, when nothing is left). ``budget_usd``
    replaces the job's budget (a cap on its whole spend, what was rebuilt included)."""
    if state.jobs.known(job_id):
        raise EditpipeError(f"Redis still has job {job_id}: `editpipe resume {job_id}` (without --output) resumes it")
    stored = stored_job(storage, job_id)
    if stored is None:
        raise JobNotFound(f"no job {job_id!r} under {storage.root} (no {job_file(job_id, MANIFEST)} there)")
    manifest, plan, mark = _plan_again(settings, storage, stored)
    same_runs = fingerprint(plan.keys()) == mark.fingerprint
    plan = with_added_runs(storage, job_id, plan)  # the runs `regenerate` added to the job
    runs = _Runs.from_storage(storage, job_id, plan, force=mark.force)
    cap = budget_usd if budget_usd is not None else (Decimal(mark.budget_usd) if mark.budget_usd else None)
    specs = load_model_specs(settings.models_dir)
    in_flight = min(len(runs.left), settings.max_concurrent) if stored.open else 0
    # A job rebuilt before (and finalized since) keeps the count of its earlier losses.
    paid_twice_before = int(((stored.summary or {}).get("rebuilt") or {}).get("possibly_paid_twice") or 0)
    left = set(runs.left)
    # A prediction a step recorded after the loss is polled, not paid again (same runs only:
    # a run's index must still name the run it was submitted for).
    state.jobs.clear_leftovers(job_id, keep=("pred",) if same_runs else ())
    state.jobs.create(
        job_id,
        name=manifest.name,
        output=storage.root,
        runs=plan.runs,
        total=len(plan.runs),
        estimated_usd=plan.cost_of([run for run in plan.runs if run.index in left], specs),
        budget_usd=cap,
        created_at=mark.created_at,
        schedule=mark.schedule,
        priority=mark.priority,
        extra={**_changes(stored, runs), "open_mark": json.dumps(asdict(mark)), "rebuilt_at": utc_now(),
               "rebuilt_in_flight": paid_twice_before + in_flight, **record_field(manifest.publish)},
    )
    mark_open(storage, mark)  # after Redis has the record again, as at a submit
    last = runs.record(state, job_id)
    if last or not plan.runs:
        finalize(state, storage, job_id)
        state.finalized(job_id, settings.finished_job_ttl_s)
    for start in range(0, len(runs.left), chunk):
        enqueue_runs(job_id, runs.left[start : start + chunk])
    return Rebuilt(
        job_id=job_id, total=len(plan.runs), succeeded=runs.count(RunStatus.SUCCEEDED),
        skipped=runs.count(RunStatus.SKIPPED), failed=runs.count(RunStatus.FAILED), left=runs.left,
        ledger_usd=sum((line.cost_usd for line in runs.ledger), Decimal("0")), in_flight=in_flight,
        same_runs=same_runs,
    )


def _plan_again(settings: Settings, storage: Storage, stored: StoredJob) -> tuple[Manifest, Plan, OpenMark]:
    """The stored manifest, planned now; local paths resolve against the folder it was
    submitted from (its open mark or its summary says which) when that folder is here, else
    the current one."""
    specs = load_model_specs(settings.models_dir)
    mark = stored.mark
    submitted_from = mark.manifest_dir if mark is not None else (stored.summary or {}).get("manifest_dir")
    base = Path(submitted_from) if submitted_from else Path.cwd()
    if not base.is_dir():
        base = Path.cwd()
    key = job_file(stored.job_id, MANIFEST)
    manifest = parse_manifest(storage.get_text(key), storage.location(key), base, specs, sources=Sources(settings),
                               max_runs=settings.max_runs)
    plan = plan_runs(manifest, specs, s3_etag=lambda uri: s3_object_etag(uri, settings))
    if mark is None:  # closed, or the job was finalized: as it would have been at its submit
        summary = stored.summary or {}
        mark = OpenMark(
            job_id=stored.job_id,
            created_at=summary.get("created_at") or utc_now(),
            runs=len(plan.runs),
            fingerprint=fingerprint(plan.keys()),
            manifest_dir=str(base),
            budget_usd=summary.get("budget_usd"),
            schedule=summary.get("schedule") or "",
            priority=max(1, manifest.priority),
        )
    return manifest, plan, mark


def _changes(stored: StoredJob, runs: _Runs) -> dict[str, int]:
    """The job's runs against what the output root held when it was planned: from its summary
    when it was finalized; else the runs skipped as unchanged and the rest as new."""
    changes = (stored.summary or {}).get("changes")
    if changes:
        return {f"runs_{name}": int(changes.get(name) or 0) for name in ("new", "changed", "unchanged")}
    unchanged = runs.count(RunStatus.SKIPPED)
    return {"runs_new": len(runs.plan.runs) - unchanged, "runs_changed": 0, "runs_unchanged": unchanged}


@dataclass
class _Runs:
    """Each planned run's end as storage tells it, and the ledger lines that go with them."""

    plan: Plan
    finished: dict[int, RunResult]
    ledger: list[LedgerEntry]
    unconfirmed: list[tuple[int, LedgerEntry]]
    left: list[int]

    @classmethod
    def from_storage(cls, storage: Storage, job_id: str, plan: Plan, *, force: bool) -> "_Runs":
        results = {line["run_key"]: line for line in _jsonl(storage, job_file(job_id, "results.jsonl"))}
        try:
            stored_ledger = parse_ledger(storage.get_text(job_file(job_id, "ledger.jsonl")))
        except FileNotFoundError:
            stored_ledger = []
        charged = {line.prediction_id: line for line in stored_ledger if line.kind is LineKind.COMPLETED}
        settled = {key for key, line in results.items() if line["status"] != RunStatus.FAILED}
        sidecars = read_sidecars(storage, [run.output_key for run in plan.runs if run.run_key not in settled])
        thumbs = set(storage.list_keys(thumbs_prefix(job_prefix(job_id))))
        finished: dict[int, RunResult] = {}
        ledger: list[LedgerEntry] = []
        left: list[int] = []
        for run in plan.runs:
            line = results.get(run.run_key)
            sidecar = sidecars.get(run.output_key) or {}
            if run.run_key in settled:
                finished[run.index] = replace(RunResult.from_dict(line), index=run.index)
                if finished[run.index].prediction_id in charged:
                    ledger.append(charged[finished[run.index].prediction_id])
            elif sidecar.get("run_key") == run.run_key and sidecar.get("job_id") == job_id:
                entry = _ledger_line(run, job_id, sidecar)
                thumb = output_thumb_key(job_prefix(job_id), run.index)
                finished[run.index] = RunResult.of(run, RunStatus.SUCCEEDED, output=run.output_key,
                                                   prediction_id=entry.prediction_id, cost_usd=entry.cost_usd,
                                                   thumbnail=thumb if thumb in thumbs else None)
                ledger.append(entry)
            elif sidecar.get("run_key") == run.run_key and not force:
                finished[run.index] = skipped_result(run, run.output_key)
            elif line is not None and not RunResult.from_dict(line).retryable:
                finished[run.index] = replace(RunResult.from_dict(line), index=run.index)
            else:
                left.append(run.index)
        index_of = {run.run_key: run.index for run in plan.runs}
        # The lines of lost submit answers, estimated or settled by `reconcile --settle`: no
        # result names their prediction, and they are kept as they are.
        unconfirmed = [(index_of[line.run_key], line) for line in stored_ledger
                       if line.kind in LOST_ANSWER_KINDS and line.run_key in index_of]
        return cls(plan, finished, ledger, unconfirmed, left)

    def count(self, status: RunStatus) -> int:
        return sum(1 for result in self.finished.values() if result.status is status)

    def record(self, state: State, job_id: str) -> bool:
        """Finish the finished runs in Redis, each with its ledger line, and charge the stored
        unconfirmed lines; True when that finished the job's last run."""
        lines = {line.prediction_id: line for line in self.ledger}
        last = False
        for index, result in sorted(self.finished.items()):
            line = lines.get(result.prediction_id) if result.status is RunStatus.SUCCEEDED else None
            last = state.runs.finish_run(
                job_id, index, outcome=result.status, result=result.to_dict(),
                ledger_line=line.to_dict() if line else None, cost_micros=to_micros(line.cost_usd) if line else 0,
            ).last or last
        for n, (index, line) in enumerate(self.unconfirmed):
            state.budget.charge_unconfirmed(job_id, index, f"unconfirmed:{index}:rebuilt-{n}", line.to_dict(),
                                            to_micros(line.cost_usd))
        return last


def _ledger_line(run: Run, job_id: str, sidecar: dict) -> LedgerEntry:
    """The ledger line of an output this job made, from its sidecar."""
    return LedgerEntry(prediction_id=sidecar.get("prediction_id"), run_key=run.run_key, job_id=job_id,
                       model=sidecar.get("model") or run.model, cost_usd=Decimal(sidecar.get("cost_usd") or "0"),
                       charged_at=sidecar.get("created_at") or utc_now())


def _jsonl(storage: Storage, key: str) -> list[dict]:
    try:
        text = storage.get_text(key)
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def describe(rebuilt: Rebuilt) -> list[str]:
    """What a person is told after a rebuild, line by line."""
    lines = [
        f"{rebuilt.job_id}: rebuilt from storage: {rebuilt.total} runs, {rebuilt.succeeded} succeeded and "
        f"{rebuilt.skipped} skipped already (their ledger, ${usd(rebuilt.ledger_usd)}, rebuilt from storage), "
        f"{rebuilt.failed} failed for good, {len(rebuilt.left)} to run",
    ]
    if not rebuilt.same_runs:
        lines.append("  the manifest's references changed since the job was submitted: runs with new run keys "
                     "are run again")
    if rebuilt.in_flight:
        lines.append(f"  up to {rebuilt.in_flight} prediction(s) may have been in flight when Redis lost the job's "
                     f"state: their ids were lost with it, so those runs are submitted again and may be paid twice")
    return lines
