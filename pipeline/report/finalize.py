"""Finalize: a finished job's records, written to storage before its final status is set.

``results.jsonl`` (one line per planned run), ``ledger.jsonl`` (one line per billed
prediction), ``job.json`` and ``summary.json`` (counts, spend against budget, duration,
failures), the job's run index, then the report pages. Finalizing is idempotent: running
it twice writes the same files.

A million-run job is finalized in bounded memory: its results are read from Redis a batch
at a time in index order and written as they come to local scratch files (``results.jsonl``
and the run index), which are then streamed to storage; what the summary needs (the failed
runs) and the report needs (which options vary) is gathered in the same pass, and the report
reads its results again page by page (``pages.write_report``).
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from ..state import BUDGET_EXHAUSTED, JobStatus, State
from ..layout import job_file, job_prefix, page_key
from ..ledger import LedgerEntry, parse_time, usd, utc_now
from ..manifest.publish import PUBLISH_MESSAGE, RECORD_FIELD, from_record
from ..notify import notify
from ..publish import OpenRoot, at_finish, open_like
from ..records import JobState, RunResult
from ..run_index import index_line, write_job_index_file
from ..storage import Storage
from .pages import PAGE_SIZE, Facts, write_report

log = logging.getLogger(__name__)


def _jsonl(lines: Iterable[dict]) -> str:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


def final_status(state: State, status: JobStatus) -> JobState:
    if state.jobs.field(status.id, "cancel_requested"):
        return JobState.CANCELLED
    if state.jobs.field(status.id, BUDGET_EXHAUSTED):
        return JobState.BUDGET_EXHAUSTED
    if state.jobs.stop_reason(status.id) or (status.succeeded + status.skipped == 0 and status.failed):
        return JobState.FAILED
    return JobState.SUCCEEDED if status.failed == 0 else JobState.PARTIAL


def finalize_job(state: State, storage: Storage, job_id: str, *, page_size: int = PAGE_SIZE,
                 open_root: OpenRoot | None = None) -> JobStatus:
    """Write the job's records and report to storage, then set its final status (so that a
    job seen as finished always has its files), then notify the job's webhook, if any.

    A job with a ``publish`` block publishes what passed its checks (``review: auto``) or
    says how many outputs wait for review (``required``), before its summary is written
    (``publish.at_finish``); ``open_root`` opens the destination (default: ``open_like``)."""
    status = state.jobs.status(job_id)
    with tempfile.TemporaryDirectory(prefix="editpipe-finalize-") as scratch:
        facts = _write_results(state, storage, job_id, Path(scratch))
    ledger = [LedgerEntry.from_dict(line) for line in state.runs.ledger(job_id)]
    storage.put_text(job_file(job_id, "ledger.jsonl"), _jsonl(line.to_dict() for line in ledger),
                     "application/x-ndjson")
    final = final_status(state, status)
    finished_at = state.jobs.field(job_id, "finished_at") or utc_now()
    summary = job_summary(state, status, facts.failed, final=final, finished_at=finished_at)
    spec = from_record(state.jobs.field(job_id, RECORD_FIELD))
    if spec is not None:
        # Publishing reads every result again (a job that publishes holds its results in
        # memory here, unlike the passes above).
        results = [RunResult.from_dict(stored) for stored in state.runs.iter_results(job_id)]
        summary["publish"] = at_finish(storage, job_id, spec, results, open_root or open_like(storage))
        # What `run` and `submit --wait` print under the summary (they read Redis, not storage).
        state.jobs.set_fields(job_id, {PUBLISH_MESSAGE: summary["publish"]["message"]})
    summary["pages"] = max(1, -(-facts.total // page_size))
    summary["report"] = storage.location(page_key(job_prefix(job_id), 1))
    text = json.dumps(summary, indent=2)
    storage.put_text(job_file(job_id, "summary.json"), text, "application/json")
    storage.put_text(job_file(job_id, "job.json"), text, "application/json")
    try:
        write_report(state, storage, job_id, summary, page_size=page_size, facts=facts)
    except Exception:  # noqa: BLE001 - the page is for people; the job's records are written
        log.exception("job %s: the report could not be written", job_id)
    state.jobs.set_final(job_id, final, finished_at)
    notify_url = state.jobs.field(job_id, "notify_url")
    if notify_url:
        notify(notify_url, summary)
    return state.jobs.status(job_id)


def _write_results(state: State, storage: Storage, job_id: str, scratch: Path) -> Facts:
    """``results.jsonl`` and the job's run index, from one pass over its results in Redis
    (written to ``scratch`` files as they come, then streamed to storage); what the summary
    and the report need of every result, gathered on the way."""
    facts = Facts()
    results_file, index_file = scratch / "results.jsonl", scratch / "index.jsonl"
    indexed = 0
    with results_file.open("w", encoding="utf-8") as out, index_file.open("w", encoding="utf-8") as index:
        for stored in state.runs.iter_results(job_id):
            result = RunResult.from_dict(stored)
            out.write(json.dumps(result.public(), separators=(",", ":")) + "\n")
            facts.add(result)
            if stored["status"] == "succeeded" and stored["output"]:
                index.write(index_line(stored["run_key"], stored["output"]) + "\n")
                indexed += 1
    storage.put_file(job_file(job_id, "results.jsonl"), results_file, "application/x-ndjson")
    write_job_index_file(state.index, storage, job_id, index_file if indexed else None)
    return facts


def job_summary(state: State, status: JobStatus, results: Iterable[RunResult], *, final: JobState,
                finished_at: str) -> dict:
    """The summary a machine reads (``summary.json``, the webhook's body); of ``results``
    only the failed ones count (the others may be left out)."""
    summary = status.to_dict()
    summary["status"] = final.value
    summary["finished_at"] = finished_at
    summary["started_at"] = state.jobs.field(status.id, "started_at")
    start = parse_time(summary["started_at"]) or parse_time(status.created_at)
    end = parse_time(finished_at)
    summary["duration_s"] = round((end - start).total_seconds(), 1) if start and end else None
    budget = status.budget_usd
    summary["budget_remaining_usd"] = usd(budget - status.spent_usd) if budget is not None else None
    summary["budget_used_pct"] = (
        round(float(status.spent_usd / budget * 100), 1) if budget else None
    )
    failed = [r for r in results if r.failed]
    summary["failure_reasons"] = [
        {"reason": reason, "count": count}
        for reason, count in Counter(r.error or "unknown" for r in failed).most_common()
    ]
    # By kind (``failures.ErrorKind``): what a machine counts ("unknown": a line written before kinds were kept).
    kinds = Counter(r.error_kind.value if r.error_kind else "unknown" for r in failed)
    summary["failure_kinds"] = dict(kinds.most_common())
    summary["failures"] = [
        {"run_key": r.run_key, "image_set": r.image_set, "prompt": r.prompt, "variant": r.variant, "error": r.error,
         "error_kind": r.error_kind.value if r.error_kind else None, "code": r.code}
        for r in failed
    ]
    # Runs never sent (budget used up, cancelled, key rejected): `editpipe resume` runs them.
    summary["not_started"] = [r.run_key for r in failed if r.not_started]
    # Against what the output root already held when the job was planned (incremental runs).
    summary["changes"] = {
        name: int(state.jobs.field(status.id, f"runs_{name}") or 0) for name in ("new", "changed", "unchanged")
    }
    open_mark = state.jobs.field(status.id, "open_mark")
    if open_mark:  # where the manifest's relative paths resolve, should the job be rebuilt
        summary["manifest_dir"] = json.loads(open_mark).get("manifest_dir") or None
    rebuilt_at = state.jobs.field(status.id, "rebuilt_at")
    if rebuilt_at:  # Redis lost the job's state, and `editpipe resume --output` rebuilt it from storage
        summary["rebuilt"] = {
            "at": rebuilt_at,
            "possibly_paid_twice": int(state.jobs.field(status.id, "rebuilt_in_flight") or 0),
        }
    return summary
