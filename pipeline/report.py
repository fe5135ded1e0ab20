"""Report: what a finished job leaves under ``jobs/<job_id>/`` in storage.

``results.jsonl`` (one line per planned run), ``ledger.jsonl`` (one line per billed
prediction), ``job.json`` and ``summary.json`` (counts, spend, timings) and ``report.html``
(the page a person opens). Finalizing is idempotent: running it twice writes the same files.
"""

from __future__ import annotations

import html
import json
import posixpath
from collections.abc import Iterable

from .jobs import JobStatus, JobStore
from .ledger import utc_now
from .storage import LocalStorage, Storage


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def _jsonl(lines: Iterable[dict]) -> str:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


def final_status(jobs: JobStore, status: JobStatus) -> str:
    if jobs.field(status.id, "cancel_requested"):
        return "cancelled"
    if jobs.stop_reason(status.id) or (status.succeeded + status.skipped == 0 and status.failed):
        return "failed"
    return "succeeded" if status.failed == 0 else "partial"


def finalize_job(jobs: JobStore, storage: Storage, job_id: str) -> JobStatus:
    """Write the job's records to storage and set its final status."""
    status = jobs.status(job_id)
    results = jobs.results(job_id)
    ledger = jobs.ledger(job_id)
    prefix = job_prefix(job_id)
    storage.put_text(f"{prefix}/results.jsonl", _jsonl(_public_result(r) for r in results), "application/x-ndjson")
    storage.put_text(f"{prefix}/ledger.jsonl", _jsonl(ledger), "application/x-ndjson")
    jobs.set_final(job_id, final_status(jobs, status), jobs.field(job_id, "finished_at") or utc_now())
    status = jobs.status(job_id)
    summary = status.to_dict()
    summary["started_at"] = jobs.field(job_id, "started_at")
    summary["failures"] = [
        {"run_key": r["run_key"], "image_set": r["image_set"], "prompt": r["prompt"], "error": r["error"]}
        for r in results
        if r["status"] == "failed"
    ]
    text = json.dumps(summary, indent=2)
    storage.put_text(f"{prefix}/summary.json", text, "application/json")
    storage.put_text(f"{prefix}/job.json", text, "application/json")
    storage.put_text(f"{prefix}/report.html", render_html(storage, prefix, summary, results), "text/html")
    return status


def _public_result(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "index"}


def _image_url(storage: Storage, prefix: str, key: str) -> str:
    # Locally the report links relatively, so the folder can be moved or zipped;
    # on S3 it links presigned URLs, since the bucket is usually private.
    if isinstance(storage, LocalStorage):
        return posixpath.relpath(key, prefix)
    return storage.url_for(key)


def render_html(storage: Storage, prefix: str, summary: dict, results: list[dict]) -> str:
    counts = summary["counts"]
    e = html.escape
    cards = []
    for r in results:
        if r.get("output"):
            url = e(_image_url(storage, prefix, r["output"]))
            cards.append(
                f'<figure><a href="{url}"><img loading="lazy" src="{url}" alt="{e(r["output"])}"></a>'
                f"<figcaption>{e(r['image_set'])} · {e(r['prompt'])} · v{r['variant']}"
                f"<br><small>{e(r['status'])} · ${e(r['cost_usd'])}</small></figcaption></figure>"
            )
    failures = "".join(
        f"<tr><td>{e(f['image_set'])}</td><td>{e(f['prompt'])}</td><td>{e(f['error'] or '')}</td></tr>"
        for f in summary["failures"]
    )
    budget = summary["budget_usd"]
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>editpipe · {e(summary['job_id'])}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:2rem;color:#222}}
.counts span{{display:inline-block;margin-right:1.5rem}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:1rem}}
figure{{margin:0}} img{{width:100%;height:180px;object-fit:contain;background:#f3f0ea}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ddd;padding:.3rem .6rem;text-align:left}}
</style></head><body>
<h1>{e(summary['name'])}</h1>
<p>Job <code>{e(summary['job_id'])}</code> · status <b>{e(summary['status'])}</b></p>
<p class="counts"><span>planned {counts['planned']}</span><span>succeeded {counts['succeeded']}</span>
<span>skipped {counts['skipped']}</span><span>failed {counts['failed']}</span></p>
<p>Spent ${e(summary['spent_usd'])}{f' of a ${e(budget)} budget' if budget else ''}
 · started {e(str(summary.get('started_at') or summary['created_at']))} · finished {e(str(summary['finished_at']))}</p>
{f'<h2>Failures</h2><table><tr><th>image set</th><th>prompt</th><th>reason</th></tr>{failures}</table>' if failures else ''}
<h2>Outputs</h2><div class="grid">{''.join(cards)}</div>
</body></html>
"""
