"""Pages: the report a person opens, a contact sheet of ``PAGE_SIZE`` runs a page.

``report.html``, ``report-2.html``, …: each run shown as its inputs → its output, each
picture linking to the full image, failures tabled on the first page. Pages are
self-contained HTML (inline CSS, no outside assets), one object each: a million-run job is
5,000 pages of 200 runs, never one giant file. They are written one at a time, each from
its own results and runs (read from Redis a page at a time), making the thumbnails its runs
still miss first (``thumbnails.make_thumbnails``), within one time budget for the whole
report, so that big jobs still finalize fast and the first pages get the thumbnails.
"""

from __future__ import annotations

import html
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from ..errors import JobNotFound
from ..state import State
from ..layout import job_prefix, page_key, sidecar_key, thumbs_prefix
from ..ledger import parse_time, usd, utc_now
from ..plan import Run
from ..records import RunResult, RunStatus
from ..storage import Storage
from ..thumbnails import THUMB_BUDGET_S, make_thumbnails
from .sheet import Links, Picture, Sheet, Varying, input_name

log = logging.getLogger(__name__)

PAGE_SIZE = 200
PAGES_PER_WINDOW = 10  # pages whose results, runs and thumbnails are handled together
MAX_FAILURE_ROWS = 500
MAX_INPUTS_SHOWN = 3


@dataclass
class Facts:
    """What the report (and the summary) need of every result of a job, gathered in one
    pass: how many, the failed ones with their positions, which options vary."""

    total: int = 0
    failed: list[RunResult] = field(default_factory=list)
    failed_at: list[int] = field(default_factory=list)
    varying: Varying = field(default_factory=Varying)

    def add(self, result: RunResult) -> None:
        if result.failed:
            self.failed.append(result)
            self.failed_at.append(self.total)
        self.varying.add(result)
        self.total += 1

    @classmethod
    def of(cls, results: Iterable[RunResult]) -> Facts:
        facts = cls()
        for result in results:
            facts.add(result)
        return facts


def write_report(state: State, storage: Storage, job_id: str, summary: dict, results: list[RunResult] | None = None,
                 *, page_size: int = PAGE_SIZE, thumb_budget_s: float = THUMB_BUDGET_S,
                 facts: Facts | None = None) -> list[str]:
    """Write every page of the report, each making its missing thumbnails first (within
    ``thumb_budget_s`` for all pages together); the pages' keys. ``results``: the job's,
    in index order (read from Redis a page at a time when None); ``facts``: theirs, when
    the caller gathered them already."""
    def source() -> Iterator[RunResult]:
        if results is not None:
            return iter(results)
        return map(RunResult.from_dict, state.runs.iter_results(job_id))

    facts = facts or Facts.of(source())
    prefix = job_prefix(job_id)
    links = Links(storage, prefix)
    thumbs = set(storage.list_keys(thumbs_prefix(prefix)))
    failed = list(zip(facts.failed_at, facts.failed))[:MAX_FAILURE_ROWS]
    option_names = facts.varying.names
    pages = max(1, -(-facts.total // page_size))
    started = time.monotonic()
    made = 0
    keys: list[str] = []
    # A window of pages at a time: its thumbnails made together (in parallel, first pages
    # first), then its pages written; what is held is one window's results and runs.
    window = page_size * PAGES_PER_WINDOW
    results_in = source()
    while True:
        chunk = list(itertools.islice(results_in, window))
        if not chunk and keys:
            break
        sheet = Sheet(storage, prefix, _runs_of(state, job_id, chunk), chunk, option_names=option_names,
                      thumbs=thumbs, links=links, total=facts.total, failed=failed)
        left_s = thumb_budget_s - (time.monotonic() - started)
        if left_s > 0:
            new = make_thumbnails(storage, sheet.tasks(), budget_s=left_s)
            thumbs |= new
            made += len(new)
        for start in range(0, max(1, len(chunk)), page_size):
            page = len(keys) + 1
            key = page_key(prefix, page)
            text = render_page(sheet, summary, chunk[start:start + page_size], page, pages, page_size)
            storage.put_text(key, text, "text/html; charset=utf-8")
            keys.append(key)
        if len(chunk) < window:
            break
    log.info("report %s: %d pages, %d thumbnails made in %.1f s", job_id, len(keys), made, time.monotonic() - started)
    return keys


def _runs_of(state: State, job_id: str, results: list[RunResult]) -> dict[int, Run]:
    """The planned runs of one page's results (read together); one Redis does not have is
    left out (its card shows no inputs)."""
    state.runs.load([(job_id, r.index) for r in results])
    runs = {}
    for r in results:
        try:
            runs[r.index] = state.runs.run(job_id, r.index)
        except JobNotFound:
            continue
    return runs


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
.checks{display:flex;flex-wrap:wrap;gap:.25rem;margin-top:.3rem}
.check{font-size:.7rem;padding:.05rem .45rem;border-radius:999px;background:#dcf3e3;color:var(--ok)}
.check.no{background:#fde4e1;color:var(--bad);font-weight:650}
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
    parsed = parse_time(value)
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


def _header(sheet: Sheet, summary: dict) -> str:
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
    checked = [r for r in sheet.results if r.checked]
    if checked:
        held = sum(1 for r in checked if not r.checks_passed)
        stats.append(_stat("checks failed", f"{held} of {len(checked)}", "bad" if held else "ok"))
    stats += [_money_stat(summary), _stat("duration", _E(_duration(summary.get("duration_s"))))]
    error = f'<p class="sub" style="color:var(--bad)">{_E(summary["error"])}</p>' if summary.get("error") else ""
    publish = summary.get("publish") or {}
    if publish.get("message"):
        error += f'<p class="sub">Publish ({_E(publish.get("review", ""))}): {_E(publish["message"])}</p>'
    badge = f'<span class="badge {_E(summary["status"])}">{_E(summary["status"].replace("_", " "))}</span>'
    return f"""<header>
<h1>{_E(summary['name'])} {badge}</h1>
<p class="sub">Job <code>{_E(summary['job_id'])}</code>
 · started {_when(summary.get('started_at') or summary['created_at'])}
 · finished {_when(summary.get('finished_at'))}{files}</p>{error}
<div class="stats">{''.join(stats)}</div>
</header>"""


def _failures(sheet: Sheet, summary: dict, option_names: list[str], page_size: int) -> str:
    failed = sheet.failed
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
        anchor = sheet.links.key(page_key(sheet.prefix, n // page_size + 1)) + f"#run-{r.index + 1}"
        rows.append(
            f'<tr><td class="num"><a href="{_E(anchor)}">#{r.index + 1}</a></td><td>{_E(r.image_set)}</td>'
            f'<td>{_E(r.prompt)}</td><td class="num">{r.variant}</td><td>{_options(r, option_names)}</td>'
            f'<td>{_kind(r)}</td><td class="reason">{_E(r.error or "unknown")}</td></tr>'
        )
    count = len(summary["failures"])
    more = (f'<p class="note">… and {count - MAX_FAILURE_ROWS} more in results.jsonl</p>'
            if count > MAX_FAILURE_ROWS else "")
    return (f"{by_reason}<h2>Failed runs ({count})</h2><table><tr><th>run</th><th>image set</th>"
            f"<th>prompt</th><th>v</th><th>options</th><th>kind</th><th>reason</th></tr>{''.join(rows)}</table>{more}")


def _kind(result: RunResult) -> str:
    """A failed run's kind and the provider's code, as the failures table shows them."""
    kind = result.error_kind.value.replace("_", " ") if result.error_kind else "unknown"
    return _E(kind) + (f' <span class="code">{result.code}</span>' if result.code is not None else "")


def _options(result: RunResult, option_names: list[str]) -> str:
    options = result.options
    return " · ".join(f"{_E(name.replace('_', ' '))} {_E(str(options[name]))}"
                      for name in option_names if name in options)


def _pager(sheet: Sheet, page: int, pages: int) -> str:
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


def _inputs(sheet: Sheet, run: Run | None) -> str:
    if run is None:
        return '<div class="ins"></div>'
    cells = []
    for ref in run.inputs[:MAX_INPUTS_SHOWN]:
        pic = sheet.input(ref)
        if pic.src:
            cells.append(_img(pic))
        else:
            cells.append(f'<span class="pic" title="{_E(pic.title)}">{_E(input_name(ref))}</span>')
    if len(run.inputs) > MAX_INPUTS_SHOWN:
        cells.append(f'<span class="more">+{len(run.inputs) - MAX_INPUTS_SHOWN} more</span>')
    return f'<div class="ins">{"".join(cells)}</div>'


def _card(sheet: Sheet, result: RunResult, option_names: list[str]) -> str:
    status = result.status.value
    run = sheet.runs.get(result.index)
    output = result.shown_output
    if output:
        out = _img(sheet.output(result), "out")
    else:
        kind = f" · {_kind(result)}" if result.failed else ""
        out = f'<div class="out none"><b>{_E(status)}{kind}</b>{_E(result.error or "no output")}</div>'
    opts = [part for part in (_options(result, option_names), f"${_E(usd(result.cost_usd))}") if part]
    if output:
        opts.append(f'<a href="{_E(sheet.links.key(sidecar_key(output)))}">details</a>')
    badge = f' <span class="badge {_E(status)}">{_E(status)}</span>' if result.status is not RunStatus.SUCCEEDED else ""
    what = f"{_E(result.image_set)} · {_E(result.prompt)} · v{result.variant}"
    return (
        f'<article class="run {_E(status)}" id="run-{result.index + 1}">'
        f'<div class="pair">{_inputs(sheet, run)}<span class="arrow">→</span>{out}</div>'
        f'<div class="cap"><span class="what" title="{what}"><b>{what}</b>{badge}</span>'
        f'<span class="n">#{result.index + 1}</span></div>'
        f'<div class="opts">{" · ".join(opts)}</div>{_checks(result)}</article>'
    )


def _checks(result: RunResult) -> str:
    """The output's checks as small pills (its detail on hover); nothing for a run without."""
    if not result.checks:
        return ""
    pills = "".join(
        f'<span class="check{"" if found.get("passed") else " no"}" title="{_E(str(found.get("detail", "")))}">'
        f'{"✓" if found.get("passed") else "✗"} {_E(name.replace("_", " "))}</span>'
        for name, found in result.checks.items())
    return f'<div class="checks">{pills}</div>'


def render_page(sheet: Sheet, summary: dict, results: list[RunResult], page: int, pages: int, page_size: int) -> str:
    option_names = sheet.option_names
    total = sheet.total
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
