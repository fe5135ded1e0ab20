"""Report: what a finished job leaves under ``jobs/<job_id>/`` in storage.

``results.jsonl`` (one line per planned run), ``ledger.jsonl`` (one line per billed
prediction), ``job.json`` and ``summary.json`` (counts, spend against budget, duration,
failures) and ``report.html`` (the page a person opens). Finalizing is idempotent: running
it twice writes the same files.

The report is a contact sheet, ``PAGE_SIZE`` runs a page (``report.html``,
``report-2.html``, …), each run shown as its inputs → its output, each picture linking to
the full image. Pages are self-contained HTML (inline CSS, no outside assets); pictures are
small JPEG thumbnails under ``jobs/<job_id>/thumbs/``: ``<n>.jpg`` for run ``n``'s output
(made when the output is collected; an output already no bigger than a thumbnail is shown
as it is, and its result's ``thumbnail`` names the output itself), ``in-<digest>.jpg`` for a
reference image (made at finalize, once per image, however many runs use it). Local references are read from the path recorded in the run, ``s3://`` ones
through the output's S3 client; ``http(s)`` references are shown as they are.

Finalizing stays fast for big jobs: thumbnails already in storage are kept, new ones are made
by a thread pool (Pillow decodes and resizes without the GIL) within ``THUMB_BUDGET_S``, and
a picture left without a thumbnail (out of time, unreadable) is shown from its full image.
Links are relative for a local output root, so the folder can be moved or zipped, and
presigned for S3 (valid 7 days; ``editpipe report JOB --refresh`` renews them).
"""

from __future__ import annotations

import hashlib
import html
import io
import json
import logging
import posixpath
import time
import webbrowser
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import click
from PIL import Image, ImageOps

from .errors import EditpipeError, SettingsError
from .ledger import usd, utc_now
from .notify import notify
from .plan import InputRef, Run
from .run_index import write_job_index
from .settings import Settings
from .state import BUDGET_EXHAUSTED, JobStatus, State
from .storage import LocalStorage, S3Storage, Storage, open_storage, parse_s3_uri

log = logging.getLogger(__name__)

PAGE_SIZE = 200
THUMB_PX = 256
OWN_THUMB_BYTES = 256 * 1024  # an output this small, and at most THUMB_PX wide and high, is its own
THUMB_BUDGET_S = 45.0
THUMB_THREADS = 8  # below boto3's default pool of 10 connections per client
LINK_TTL_S = 7 * 24 * 3600
MAX_FAILURE_ROWS = 500
MAX_INPUTS_SHOWN = 3


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def page_key(prefix: str, page: int) -> str:
    """``report.html`` for the first page, ``report-<n>.html`` for the others."""
    return f"{prefix}/report.html" if page == 1 else f"{prefix}/report-{page}.html"


def _jsonl(lines: Iterable[dict]) -> str:
    return "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines)


def final_status(state: State, status: JobStatus) -> str:
    if state.jobs.field(status.id, "cancel_requested"):
        return "cancelled"
    if state.jobs.field(status.id, BUDGET_EXHAUSTED):
        return BUDGET_EXHAUSTED
    if state.jobs.stop_reason(status.id) or (status.succeeded + status.skipped == 0 and status.failed):
        return "failed"
    return "succeeded" if status.failed == 0 else "partial"


def finalize_job(state: State, storage: Storage, job_id: str, *, page_size: int = PAGE_SIZE) -> JobStatus:
    """Write the job's records and report to storage, then set its final status (so that a
    job seen as finished always has its files), then notify the job's webhook, if any."""
    status = state.jobs.status(job_id)
    results = state.runs.results(job_id)
    prefix = job_prefix(job_id)
    storage.put_text(f"{prefix}/results.jsonl", _jsonl(_public_result(r) for r in results), "application/x-ndjson")
    storage.put_text(f"{prefix}/ledger.jsonl", _jsonl(state.runs.ledger(job_id)), "application/x-ndjson")
    write_job_index(state.index, storage, job_id, results)
    final = final_status(state, status)
    finished_at = state.jobs.field(job_id, "finished_at") or utc_now()
    summary = job_summary(state, status, results, final=final, finished_at=finished_at)
    summary["pages"] = max(1, -(-len(results) // page_size))
    summary["report"] = storage.location(page_key(prefix, 1))
    text = json.dumps(summary, indent=2)
    storage.put_text(f"{prefix}/summary.json", text, "application/json")
    storage.put_text(f"{prefix}/job.json", text, "application/json")
    try:
        write_report(state, storage, job_id, summary, results, page_size=page_size)
    except Exception:  # noqa: BLE001 - the page is for people; the job's records are written
        log.exception("job %s: the report could not be written", job_id)
    state.jobs.set_final(job_id, final, finished_at)
    notify_url = state.jobs.field(job_id, "notify_url")
    if notify_url:
        notify(notify_url, summary)
    return state.jobs.status(job_id)


def _public_result(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "index"}


def _parse_time(value: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


def job_summary(state: State, status: JobStatus, results: list[dict], *, final: str, finished_at: str) -> dict:
    """The summary a machine reads (``summary.json``, the webhook's body)."""
    summary = status.to_dict()
    summary["status"] = final
    summary["finished_at"] = finished_at
    summary["started_at"] = state.jobs.field(status.id, "started_at")
    start = _parse_time(summary["started_at"]) or _parse_time(status.created_at)
    end = _parse_time(finished_at)
    summary["duration_s"] = round((end - start).total_seconds(), 1) if start and end else None
    budget = status.budget_usd
    summary["budget_remaining_usd"] = usd(budget - status.spent_usd) if budget is not None else None
    summary["budget_used_pct"] = (
        round(float(status.spent_usd / budget * 100), 1) if budget else None
    )
    failed = [r for r in results if r["status"] == "failed"]
    summary["failure_reasons"] = [
        {"reason": reason, "count": count}
        for reason, count in Counter(r["error"] or "unknown" for r in failed).most_common()
    ]
    summary["failures"] = [
        {"run_key": r["run_key"], "image_set": r["image_set"], "prompt": r["prompt"], "variant": r["variant"],
         "error": r["error"]}
        for r in failed
    ]
    # Runs never sent (budget used up, cancelled, key rejected): `editpipe resume` runs them.
    summary["not_started"] = [r["run_key"] for r in failed if r.get("not_started")]
    # Against what the output root already held when the job was planned (incremental runs).
    summary["changes"] = {
        name: int(state.jobs.field(status.id, f"runs_{name}") or 0) for name in ("new", "changed", "unchanged")
    }
    return summary


# Thumbnails


def make_thumbnail(data: bytes, px: int = THUMB_PX) -> bytes:
    """A JPEG at most ``px`` on its longer side; transparency flattened onto white."""
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (px * 2, px * 2))  # JPEG decodes at a fraction of full size
        img = ImageOps.exif_transpose(img)
        img.thumbnail((px, px), reducing_gap=2.0)
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            img = Image.new("RGB", rgba.size, (255, 255, 255))
            img.paste(rgba, mask=rgba.getchannel("A"))
        elif img.mode != "RGB":
            img = img.convert("RGB")
        out = io.BytesIO()
        img.save(out, "JPEG", quality=82)
        return out.getvalue()


def is_own_thumbnail(data: bytes, px: int = THUMB_PX) -> bool:
    """Whether an image is already thumbnail-sized (a thumbnail would save the viewer nothing)."""
    if len(data) > OWN_THUMB_BYTES:
        return False
    with Image.open(io.BytesIO(data)) as img:  # reads the header only
        return max(img.size) <= px


def store_output_thumbnail(storage: Storage, job_id: str, index: int, output_key: str, data: bytes) -> str:
    """Write run ``index``'s thumbnail from the output bytes in hand (when the output is
    collected), so that finalize has nothing left to make for it. Returns the key the report
    shows: the thumbnail's, or the output's own when it is small already."""
    if is_own_thumbnail(data):
        return output_key
    key = output_thumb_key(job_prefix(job_id), index)
    storage.put_bytes(key, make_thumbnail(data), "image/jpeg")
    return key


@dataclass(frozen=True)
class _ThumbTask:
    key: str
    read: Callable[[], bytes]
    what: str  # for the log: a storage key or an input's name, never a URL with a signature


def _make_one(storage: Storage, task: _ThumbTask) -> bool:
    try:
        storage.put_bytes(task.key, make_thumbnail(task.read()), "image/jpeg")
        return True
    except Exception as exc:  # noqa: BLE001 - one bad image must not cost the report
        log.warning("no thumbnail for %s: %s: %s", task.what, type(exc).__name__, exc)
        return False


def make_thumbnails(storage: Storage, tasks: list[_ThumbTask], *, budget_s: float = THUMB_BUDGET_S,
                    threads: int = THUMB_THREADS) -> set[str]:
    """Run ``tasks`` in a thread pool until done or ``budget_s`` is spent; the keys made."""
    made: set[str] = set()
    if not tasks:
        return made
    pool = ThreadPoolExecutor(threads, thread_name_prefix="thumb")
    futures = {pool.submit(_make_one, storage, task): task.key for task in tasks}
    try:
        for future in as_completed(futures, timeout=budget_s):
            if future.result():
                made.add(futures[future])
    except FuturesTimeout:
        log.warning("thumbnails: %d of %d made in %.0f s; the rest show the full image",
                    len(made), len(tasks), budget_s)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    return made


# Links and pictures


@dataclass(frozen=True)
class Picture:
    """One image on the sheet: ``src`` to show (a thumbnail when there is one), ``href`` to
    open, or neither (an image this report cannot reach), with a ``title`` either way."""

    src: str | None
    href: str | None
    title: str


class _Links:
    """URLs of storage keys and reference images as a report page should write them."""

    def __init__(self, storage: Storage, prefix: str):
        self.storage = storage
        self.prefix = prefix
        self.local = isinstance(storage, LocalStorage)
        self.s3 = storage.client if isinstance(storage, S3Storage) else None
        self._cache: dict[str, str] = {}

    def key(self, key: str) -> str:
        if self.local:
            return posixpath.relpath(key, self.prefix)
        if key not in self._cache:
            self._cache[key] = self.storage.url_for(key, LINK_TTL_S)
        return self._cache[key]

    def s3_object(self, uri: str) -> str | None:
        if self.s3 is None:
            return None
        if uri not in self._cache:
            bucket, key = parse_s3_uri(uri)
            self._cache[uri] = self.s3.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=LINK_TTL_S
            )
        return self._cache[uri]


def input_thumb_key(prefix: str, ref: InputRef) -> str:
    digest = hashlib.sha256(f"{ref.kind}\0{ref.uri}\0{ref.identity}".encode()).hexdigest()[:24]
    return f"{prefix}/thumbs/in-{digest}.jpg"


def output_thumb_key(prefix: str, index: int) -> str:
    return f"{prefix}/thumbs/{index}.jpg"


def _input_name(ref: InputRef) -> str:
    return posixpath.basename(ref.uri.split("?", 1)[0]) or ref.uri


class _Sheet:
    """Decides, for every run on the sheet, which thumbnails to make and what to show."""

    def __init__(self, storage: Storage, prefix: str, runs: dict[int, Run], results: list[dict]):
        self.storage = storage
        self.prefix = prefix
        self.runs = runs
        self.results = results
        self.links = _Links(storage, prefix)
        self.thumbs: set[str] = set(storage.list_keys(f"{prefix}/thumbs/"))
        self.option_names = _varying_options(results)

    def _input_reader(self, ref: InputRef) -> Callable[[], bytes] | None:
        if ref.kind == "local":
            path = Path(ref.uri)
            return path.read_bytes
        if ref.kind == "s3" and self.links.s3 is not None:
            bucket, key = parse_s3_uri(ref.uri)
            client = self.links.s3
            return lambda: client.get_object(Bucket=bucket, Key=key)["Body"].read()
        return None

    def tasks(self) -> list[_ThumbTask]:
        """Missing thumbnails in sheet order, so that the first pages are served first."""
        tasks: list[_ThumbTask] = []
        planned = set(self.thumbs)
        for result in self.results:
            run = self.runs.get(result["index"])
            for ref in run.inputs if run else ():
                key = input_thumb_key(self.prefix, ref)
                read = None if key in planned else self._input_reader(ref)
                if read is not None:
                    planned.add(key)
                    tasks.append(_ThumbTask(key, read, _input_name(ref)))
            if result.get("output") and result["status"] != "failed" and not result.get("thumbnail"):
                key = output_thumb_key(self.prefix, result["index"])
                if key not in planned:
                    planned.add(key)
                    output = result["output"]
                    tasks.append(_ThumbTask(key, lambda output=output: self.storage.get_bytes(output), output))
        return tasks

    def output(self, result: dict) -> Picture:
        key = result["output"]
        full = self.links.key(key)
        if result.get("thumbnail"):  # made when the output was collected
            return Picture(self.links.key(result["thumbnail"]), full, key)
        thumb = output_thumb_key(self.prefix, result["index"])
        return Picture(self.links.key(thumb) if thumb in self.thumbs else full, full, key)

    def input(self, ref: InputRef) -> Picture:
        thumb = input_thumb_key(self.prefix, ref)
        src = self.links.key(thumb) if thumb in self.thumbs else None
        name = _input_name(ref)
        if ref.kind == "local":
            # The original is on the machine that submitted the job: link it from a local
            # report, link the thumbnail from a shared (S3) one.
            href = Path(ref.uri).absolute().as_uri() if self.links.local else src
            if src is None and self.links.local and Path(ref.uri).is_file():
                src = href
            return Picture(src, href, f"{name} (local file)")
        if ref.kind == "s3":
            full = self.links.s3_object(ref.uri)
            return Picture(src or full, full, ref.uri)
        return Picture(src or ref.uri, ref.uri, ref.uri)


def _runs_by_index(state: State, job_id: str) -> dict[int, Run]:
    return {run.index: run for run in state.runs.planned(job_id)}


def write_report(state: State, storage: Storage, job_id: str, summary: dict, results: list[dict], *,
                 page_size: int = PAGE_SIZE, thumb_budget_s: float = THUMB_BUDGET_S) -> list[str]:
    """Make the missing thumbnails and write every page of the report; the pages' keys."""
    prefix = job_prefix(job_id)
    sheet = _Sheet(storage, prefix, _runs_by_index(state, job_id), results)
    started = time.monotonic()
    tasks = sheet.tasks()
    sheet.thumbs |= make_thumbnails(storage, tasks, budget_s=thumb_budget_s)
    log.info("report %s: %d thumbnails made in %.1f s", job_id, len(tasks), time.monotonic() - started)
    pages = max(1, -(-len(results) // page_size))
    keys = []
    for page in range(1, pages + 1):
        chunk = results[(page - 1) * page_size: page * page_size]
        key = page_key(prefix, page)
        storage.put_text(key, render_page(sheet, summary, chunk, page, pages, page_size), "text/html; charset=utf-8")
        keys.append(key)
    return keys


# HTML

_E = html.escape

CSS = """
:root{--ink:#1f2328;--muted:#6b6f76;--line:#e6e1d8;--bg:#f7f5f0;--tile:#efeae1;--ok:#1a7f37;--bad:#b42318;
--warn:#8a5a00;--accent:#8b6a3e}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--ink);background:var(--bg)}
a{color:#7a5222}
header{background:#fff;border-bottom:1px solid var(--line);padding:1.4rem 2rem 1.2rem}
main{padding:1.2rem 2rem 3rem}
h1{margin:0;font-size:1.6rem;display:flex;align-items:center;gap:.7rem;flex-wrap:wrap}
h2{font-size:1.1rem;margin:1.6rem 0 .7rem}
.sub{color:var(--muted);margin:.3rem 0 0}
.sub a{margin-left:.6rem}
.badge{display:inline-block;padding:.12rem .6rem;border-radius:999px;font-size:.72rem;font-weight:650;
text-transform:uppercase;letter-spacing:.05em;background:#eee;color:#444;vertical-align:middle}
.badge.succeeded{background:#dcf3e3;color:var(--ok)}.badge.failed{background:#fde4e1;color:var(--bad)}
.badge.partial,.badge.cancelled,.badge.budget_exhausted{background:#fff0c7;color:var(--warn)}.badge.skipped{background:#e8eef7;color:#2d4f7c}
.stats{display:flex;flex-wrap:wrap;gap:.7rem;margin-top:1rem}
.stat{background:var(--bg);border:1px solid var(--line);border-radius:10px;padding:.55rem .9rem;min-width:7.5rem}
.stat b{display:block;font-size:1.35rem;font-variant-numeric:tabular-nums}
.stat span{color:var(--muted);font-size:.72rem;text-transform:uppercase;letter-spacing:.06em}
.stat.bad b{color:var(--bad)}.stat.ok b{color:var(--ok)}
.stat.money{min-width:15rem}
.meter{height:6px;background:#e4ded3;border-radius:3px;margin-top:.4rem;overflow:hidden}
.meter i{display:block;height:100%;background:var(--accent)}
.meter.over i{background:var(--bad)}
table{border-collapse:collapse;background:#fff;border:1px solid var(--line);border-radius:8px;overflow:hidden;
max-width:100%}
th,td{padding:.4rem .7rem;text-align:left;vertical-align:top;border-bottom:1px solid var(--line)}
th{background:#faf8f4;font-size:.75rem;text-transform:uppercase;letter-spacing:.05em;color:var(--muted)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.reason{color:var(--bad);max-width:48rem;word-break:break-word}
.note{color:var(--muted);margin:.5rem 0}
nav.pager{display:flex;align-items:center;gap:.35rem;flex-wrap:wrap;margin:1rem 0}
nav.pager a,nav.pager span{padding:.25rem .6rem;border-radius:6px;border:1px solid var(--line);background:#fff;
text-decoration:none;color:var(--ink)}
nav.pager span.here{background:var(--ink);color:#fff;border-color:var(--ink)}
nav.pager span.off{color:#bbb}
nav.pager .gap{border:0;background:none}
.sheet{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1rem}
.run{background:#fff;border:1px solid var(--line);border-radius:12px;padding:.7rem;display:flex;flex-direction:column;
gap:.55rem;min-width:0}
.run.failed{border-color:#f1b8b0;background:#fffafa}
.pair{display:flex;align-items:center;gap:.5rem}
.ins{display:flex;flex-direction:column;gap:.35rem;flex:none;width:76px}
.ins a,.ins .pic{display:block;width:76px;height:76px;border-radius:7px;overflow:hidden;background:var(--tile)}
.ins img{width:100%;height:100%;object-fit:cover;display:block}
.ins .more{font-size:.75rem;color:var(--muted);text-align:center}
.ins .pic{display:flex;align-items:center;justify-content:center;font-size:.65rem;color:var(--muted);padding:.2rem;
text-align:center;word-break:break-all}
.arrow{flex:none;color:#b3a996;font-size:1.3rem}
.out{flex:1;min-width:0;height:250px;border-radius:9px;overflow:hidden;background:var(--tile);display:block}
.out img{width:100%;height:100%;object-fit:contain;display:block}
.out.none{display:flex;align-items:center;justify-content:center;flex-direction:column;padding:1rem;text-align:center;
background:#fdeeec;color:var(--bad);font-size:.82rem;word-break:break-word}
.out.none b{font-size:.72rem;text-transform:uppercase;letter-spacing:.06em;margin-bottom:.3rem}
img.broken{opacity:.25}
.cap{display:flex;justify-content:space-between;gap:.5rem;align-items:baseline}
.cap .what{min-width:0;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.cap .n{color:var(--muted);font-size:.75rem;font-variant-numeric:tabular-nums}
.opts{color:var(--muted);font-size:.78rem}
.opts a{margin-left:.3rem}
footer{color:var(--muted);font-size:.78rem;padding:0 2rem 2rem}
"""

# Tallies the pictures as they load (for people: a broken one is dimmed; for tests:
# <body data-images data-loaded data-broken> say how many loaded).
SCRIPT = """
(function(){var b=document.body,imgs=document.images;
function tally(){var ok=0,bad=0;for(var i=0;i<imgs.length;i++){var m=imgs[i];
if(m.complete){if(m.naturalWidth>0)ok++;else{bad++;m.classList.add('broken');}}}
b.dataset.images=imgs.length;b.dataset.loaded=ok;b.dataset.broken=bad;}
for(var i=0;i<imgs.length;i++){imgs[i].addEventListener('load',tally);imgs[i].addEventListener('error',tally);}
tally();window.addEventListener('load',tally);})();
"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    s = int(round(seconds))
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m} min" if h else f"{m} min {s} s"


def _when(value: str | None) -> str:
    parsed = _parse_time(value)
    return parsed.strftime("%Y-%m-%d %H:%M:%S UTC") if parsed else "–"


def _stat(label: str, value: str, cls: str = "", extra: str = "") -> str:
    return f'<div class="stat {cls}"><b>{value}</b><span>{_E(label)}</span>{extra}</div>'


def _money_stat(summary: dict) -> str:
    spent = f"${_E(summary['spent_usd'])}"
    unconfirmed = summary.get("unconfirmed_usd")
    # Submits whose answer was lost may have been billed: say so next to the spend.
    maybe = f" · ${_E(unconfirmed)} unconfirmed" if unconfirmed and Decimal(unconfirmed) else ""
    budget = summary.get("budget_usd")
    if budget is None:
        return _stat(f"spent{maybe} · no budget · est. ${summary['estimated_usd']}", spent, "money")
    pct = summary.get("budget_used_pct") or 0.0
    over = Decimal(summary["spent_usd"]) > Decimal(budget)
    meter = f'<div class="meter{" over" if over else ""}"><i style="width:{min(100.0, pct):.1f}%"></i></div>'
    return _stat(f"spent of ${budget} budget · {pct:g}%{maybe}", spent, "money", meter)


def _header(sheet: _Sheet, summary: dict) -> str:
    counts = summary["counts"]
    prefix = sheet.prefix
    files = "".join(
        f'<a href="{_E(sheet.links.key(f"{prefix}/{name}"))}">{name}</a>'
        for name in ("summary.json", "results.jsonl", "ledger.jsonl", "manifest.yaml")
    )
    stats = [
        _stat("planned", str(counts["planned"])),
        _stat("succeeded", str(counts["succeeded"]), "ok" if counts["succeeded"] else ""),
        _stat("skipped", str(counts["skipped"])),
        _stat("failed", str(counts["failed"]), "bad" if counts["failed"] else ""),
    ]
    if counts.get("unfinished"):
        stats.append(_stat("unfinished", str(counts["unfinished"]), "bad"))
    stats += [_money_stat(summary), _stat("duration", _E(_duration(summary.get("duration_s"))))]
    error = f'<p class="sub" style="color:var(--bad)">{_E(summary["error"])}</p>' if summary.get("error") else ""
    badge = f'<span class="badge {_E(summary["status"])}">{_E(summary["status"].replace("_", " "))}</span>'
    return f"""<header>
<h1>{_E(summary['name'])} {badge}</h1>
<p class="sub">Job <code>{_E(summary['job_id'])}</code>
 · started {_when(summary.get('started_at') or summary['created_at'])}
 · finished {_when(summary.get('finished_at'))}{files}</p>{error}
<div class="stats">{''.join(stats)}</div>
</header>"""


def _failures(sheet: _Sheet, summary: dict, option_names: list[str], page_size: int) -> str:
    failed = [(n, r) for n, r in enumerate(sheet.results) if r["status"] == "failed"]
    if not failed:
        return ""
    reasons = summary["failure_reasons"]
    by_reason = ""
    if len(reasons) > 1:
        rows = "".join(f'<tr><td class="num">{r["count"]}</td><td class="reason">{_E(r["reason"])}</td></tr>'
                       for r in reasons[:50])
        by_reason = f"<h2>Failures by reason</h2><table><tr><th>runs</th><th>reason</th></tr>{rows}</table>"
    rows = []
    for n, r in failed[:MAX_FAILURE_ROWS]:
        anchor = sheet.links.key(page_key(sheet.prefix, n // page_size + 1)) + f"#run-{r['index'] + 1}"
        rows.append(
            f'<tr><td class="num"><a href="{_E(anchor)}">#{r["index"] + 1}</a></td><td>{_E(r["image_set"])}</td>'
            f'<td>{_E(r["prompt"])}</td><td class="num">{r["variant"]}</td><td>{_options(r, option_names)}</td>'
            f'<td class="reason">{_E(r["error"] or "unknown")}</td></tr>'
        )
    more = (f'<p class="note">… and {len(failed) - MAX_FAILURE_ROWS} more in results.jsonl</p>'
            if len(failed) > MAX_FAILURE_ROWS else "")
    return (f"{by_reason}<h2>Failed runs ({len(failed)})</h2><table><tr><th>run</th><th>image set</th>"
            f"<th>prompt</th><th>v</th><th>options</th><th>reason</th></tr>{''.join(rows)}</table>{more}")


def _options(result: dict, option_names: list[str]) -> str:
    options = result.get("options") or {}
    return " · ".join(f"{_E(name.replace('_', ' '))} {_E(str(options[name]))}"
                      for name in option_names if name in options)


def _pager(sheet: _Sheet, page: int, pages: int) -> str:
    if pages == 1:
        return ""

    def link(n: int, label: str) -> str:
        return f'<a href="{_E(sheet.links.key(page_key(sheet.prefix, n)))}">{label}</a>'

    shown = sorted({1, pages, *range(max(1, page - 2), min(pages, page + 2) + 1)})
    items = [link(page - 1, "← Previous") if page > 1 else '<span class="off">← Previous</span>']
    last = 0
    for n in shown:
        if n > last + 1:
            items.append('<span class="gap">…</span>')
        items.append(f'<span class="here">{n}</span>' if n == page else link(n, str(n)))
        last = n
    items.append(link(page + 1, "Next →") if page < pages else '<span class="off">Next →</span>')
    return f'<nav class="pager" aria-label="pages">{"".join(items)}</nav>'


def _img(pic: Picture, cls: str = "") -> str:
    img = f'<img loading="lazy" decoding="async" src="{_E(pic.src)}" alt="{_E(pic.title)}" title="{_E(pic.title)}">'
    return f'<a class="{cls}" href="{_E(pic.href)}">{img}</a>' if pic.href else img


def _inputs(sheet: _Sheet, run: Run | None) -> str:
    if run is None:
        return '<div class="ins"></div>'
    cells = []
    for ref in run.inputs[:MAX_INPUTS_SHOWN]:
        pic = sheet.input(ref)
        if pic.src:
            cells.append(_img(pic))
        else:
            cells.append(f'<span class="pic" title="{_E(pic.title)}">{_E(_input_name(ref))}</span>')
    if len(run.inputs) > MAX_INPUTS_SHOWN:
        cells.append(f'<span class="more">+{len(run.inputs) - MAX_INPUTS_SHOWN} more</span>')
    return f'<div class="ins">{"".join(cells)}</div>'


def _varying_options(results: list[dict]) -> list[str]:
    """Options that differ between runs of this job: the ones worth a caption."""
    seen: dict[str, set[str]] = {}
    for r in results:
        for name, value in (r.get("options") or {}).items():
            seen.setdefault(name, set()).add(str(value))
    return [name for name, values in seen.items() if len(values) > 1]


def _card(sheet: _Sheet, result: dict, option_names: list[str]) -> str:
    status = result["status"]
    run = sheet.runs.get(result["index"])
    if result.get("output") and status != "failed":
        out = _img(sheet.output(result), "out")
    else:
        out = f'<div class="out none"><b>{_E(status)}</b>{_E(result.get("error") or "no output")}</div>'
    opts = [part for part in (_options(result, option_names), f"${_E(result['cost_usd'])}") if part]
    if result.get("output") and status != "failed":
        stem = result["output"].rsplit(".", 1)[0]
        opts.append(f'<a href="{_E(sheet.links.key(f"{stem}.json"))}">details</a>')
    badge = f' <span class="badge {_E(status)}">{_E(status)}</span>' if status != "succeeded" else ""
    what = f"{_E(result['image_set'])} · {_E(result['prompt'])} · v{result['variant']}"
    return (
        f'<article class="run {_E(status)}" id="run-{result["index"] + 1}">'
        f'<div class="pair">{_inputs(sheet, run)}<span class="arrow">→</span>{out}</div>'
        f'<div class="cap"><span class="what" title="{what}"><b>{what}</b>{badge}</span>'
        f'<span class="n">#{result["index"] + 1}</span></div>'
        f'<div class="opts">{" · ".join(opts)}</div></article>'
    )


def render_page(sheet: _Sheet, summary: dict, results: list[dict], page: int, pages: int, page_size: int) -> str:
    option_names = sheet.option_names
    total = len(sheet.results)
    first = (page - 1) * page_size + 1
    span = f"runs {first}–{first + len(results) - 1} of {total}" if results else "no runs"
    if page == 1:
        failures = _failures(sheet, summary, option_names, page_size)
    elif summary["failures"]:
        failures = (f'<p class="note">{len(summary["failures"])} failed runs: see the table on '
                    f'<a href="{_E(sheet.links.key(page_key(sheet.prefix, 1)))}">page 1</a>.</p>')
    else:
        failures = ""
    pager = _pager(sheet, page, pages)
    cards = "".join(_card(sheet, r, option_names) for r in results)
    title = f"{summary['name']} · {summary['job_id']}" + (f" · page {page}" if pages > 1 else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>{_E(title)}</title>
<style>{CSS}</style></head>
<body>
{_header(sheet, summary)}
<main>
{failures}
<h2>Contact sheet <small class="note">· {span}{f' · page {page} of {pages}' if pages > 1 else ''}</small></h2>
{pager}
<div class="sheet">{cards}</div>
{pager}
</main>
<footer>editpipe · inputs → output for each run; every picture opens the full image{
'' if sheet.links.local else ' (links valid 7 days from ' + _E(_when(utc_now())) + '; <code>editpipe report ' +
_E(summary['job_id']) + ' --refresh</code> renews them)'}.</footer>
<script>{SCRIPT}</script>
</body></html>
"""


# Command line


def report_location(storage: Storage, job_id: str) -> str:
    """Where a person opens the report: a local path, or a presigned URL (7 days) on S3."""
    key = page_key(job_prefix(job_id), 1)
    if isinstance(storage, LocalStorage):
        return str(storage.path / key)
    return storage.url_for(key, LINK_TTL_S)


@click.command("report")
@click.argument("job_id")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a web browser.")
@click.option("--refresh", is_flag=True,
              help="Write the report again from the job's records in Redis (renews S3 links).")
def report_command(job_id: str, open_browser: bool, refresh: bool) -> None:
    """Print where a finished job's report is (a path, or a presigned URL valid 7 days)."""
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: the report is found through the Redis the workers use")
    state = State.from_url(settings.redis_url)
    status = state.jobs.status(job_id)
    if not status.done:
        raise EditpipeError(
            f"job {job_id} is still {status.status} ({status.finished}/{status.total} runs finished); "
            "its report is written when it ends"
        )
    storage = open_storage(status.output, settings)
    prefix = job_prefix(job_id)
    if refresh:
        summary = json.loads(storage.get_text(f"{prefix}/summary.json"))
        write_report(state, storage, job_id, summary, state.runs.results(job_id))
    elif not storage.exists(page_key(prefix, 1)):
        raise EditpipeError(f"job {job_id} has no report at {storage.location(page_key(prefix, 1))}")
    location = report_location(storage, job_id)
    click.echo(location)
    if open_browser:
        url = Path(location).as_uri() if isinstance(storage, LocalStorage) else location
        if not webbrowser.open(url):
            click.echo("no web browser found: open the address above yourself", err=True)
