"""Where a job's files live under its output root: the names every writer and reader shares.

``jobs/<job_id>/`` holds the job's records (``results.jsonl``, ``ledger.jsonl``,
``job.json``, ``summary.json``, ``manifest.yaml``), its report pages (``report.html``,
``report-2.html``, …) and their thumbnails (``thumbs/``), and, once people review it, its
``review.jsonl`` (decisions, appended) and ``published.jsonl`` (what publish copied where). An output's sidecar sits next to
the output, with the same stem and ``.json``. Pure names: nothing here reads or writes.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .plan import InputRef

JOBS = "jobs/"
REVIEW = "review.jsonl"
PUBLISHED = "published.jsonl"


def job_prefix(job_id: str) -> str:
    return f"{JOBS}{job_id}"


def job_file(job_id: str, name: str) -> str:
    """A file of the job's records: ``results.jsonl``, ``ledger.jsonl``, ``summary.json``, …"""
    return f"{job_prefix(job_id)}/{name}"


def page_key(prefix: str, page: int) -> str:
    """``report.html`` for the first page, ``report-<n>.html`` for the others."""
    return f"{prefix}/report.html" if page == 1 else f"{prefix}/report-{page}.html"


def thumbs_prefix(prefix: str) -> str:
    return f"{prefix}/thumbs/"


def output_thumb_key(prefix: str, index: int) -> str:
    """Run ``index``'s output as a thumbnail."""
    return f"{thumbs_prefix(prefix)}{index}.jpg"


def input_thumb_key(prefix: str, ref: InputRef) -> str:
    """A reference image as a thumbnail: one per image, however many runs use it."""
    digest = hashlib.sha256(f"{ref.kind}\0{ref.uri}\0{ref.identity}".encode()).hexdigest()[:24]
    return f"{thumbs_prefix(prefix)}in-{digest}.jpg"


def sidecar_key(output_key: str) -> str:
    """The JSON that describes an output: its stem with ``.json``."""
    stem = output_key.rsplit(".", 1)[0]
    return f"{stem}.json"
