"""Report: what a finished job leaves under ``jobs/<job_id>/`` in storage (layer 4, outputs).

``finalize`` writes the job's records (``results.jsonl``, ``ledger.jsonl``, ``job.json``,
``summary.json``, its run index), then the report pages, then sets the job's final status
and notifies its webhook. ``pages`` renders the contact sheet (``report.html``,
``report-2.html``, …); ``sheet`` decides what each picture shows and links to: relative links
for a local output root (the folder can be moved or zipped), presigned ones for S3 (valid
7 days; ``editpipe report JOB --refresh`` renews them).

May import the domain (records, layout, ledger, plan), the adapters (storage, the job store,
thumbnails, the run index), ``notify`` and ``publish`` (a finished job with ``review: auto``
publishes what passed its checks); never the engine's steps, the CLI or ``workers``.
"""

from .finalize import final_status, finalize_job, job_summary
from .pages import PAGE_SIZE, render_page, write_report
from .sheet import LINK_TTL_S, report_location

__all__ = [
    "LINK_TTL_S",
    "PAGE_SIZE",
    "final_status",
    "finalize_job",
    "job_summary",
    "render_page",
    "report_location",
    "write_report",
]
