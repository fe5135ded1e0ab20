"""``editpipe top``: a live terminal view of the fleet, from the same snapshot as the metrics.

Each active (or just finished) job's progress bar, rate and ETA, spend against its budget;
the account's starts in the last minute and predictions in flight against the tier's limits,
the 429 throttle; failures by kind of the jobs shown. Redrawn every ``--interval`` seconds;
``q`` (or Ctrl-C) quits. A job's rate is the runs it finished over the last minute this view
has watched (before that, since its first submit), so the ETA follows what the job does now.
"""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import click
from rich.console import Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ..errors import SettingsError
from ..ledger import from_micros, usd
from ..metrics import account_limits, daily_cap_usd
from ..settings import Settings
from ..state import State
from ..state.metrics import JobMetrics, Snapshot
from .output import console, err

RATE_WINDOW_S = 60.0


class Rates:
    """Each job's finished runs over time, as this view saw them."""

    def __init__(self) -> None:
        self._seen: dict[str, deque[tuple[float, int]]] = {}

    def per_minute(self, job: JobMetrics, now: float) -> float | None:
        seen = self._seen.setdefault(job.id, deque())
        seen.append((now, job.finished))
        while len(seen) > 2 and now - seen[1][0] >= RATE_WINDOW_S:
            seen.popleft()
        first_t, first_n = seen[0]
        if now - first_t >= 5 and job.finished > first_n:
            return (job.finished - first_n) / (now - first_t) * 60
        started = _unix(job.started_at)
        if started is not None and now > started and job.finished:
            return job.finished / (now - started) * 60
        return None


def _unix(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() if iso else None
    except ValueError:
        return None


def _eta(left: int, rate: float | None) -> str:
    if left == 0:
        return "done"
    if not rate:
        return "-"
    seconds = int(left / rate * 60)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def render(snap: Snapshot, settings: Settings, rates: Rates, width: int = 120) -> Group:
    """One frame of the view, for a terminal ``width`` columns wide."""
    per_minute, concurrent = account_limits(snap, settings)
    lim = snap.limits
    account = Text(
        f"starts/min {lim.starts_last_minute} / {per_minute}   in flight {lim.in_flight} / {concurrent}   "
        f"429s {lim.rate_limited_total}"
        + (f"   paused {lim.pause_s:.0f}s" if lim.pause_s > 0 else "")
        + (f"   rate {lim.factor:.0%}" if lim.factor < 1 else "")
        + f"   spent today ${usd(from_micros(snap.spend_by_day.get(snap.today, 0)))}"
        + (f" / ${usd(cap)}" if (cap := daily_cap_usd(snap, settings)) is not None else "")
    )
    jobs = Table(expand=True, box=None, pad_edge=False)
    # On a narrow terminal the job id is cut short; the figures never are.
    jobs.add_column("job", no_wrap=True, overflow="ellipsis", ratio=1, min_width=20)
    bar = 20 if width >= 120 else 10
    for name in ("status", "progress", "done", "failed", "queued", "/min", "ETA", "spent / budget"):
        jobs.add_column(name, justify="left" if name in ("status", "progress") else "right", no_wrap=True)
    failures: dict[str, int] = {}
    for job in snap.jobs:
        rate = rates.per_minute(job, snap.now)
        budget = f" / ${usd(from_micros(job.budget_micros))}" if job.budget_micros is not None else ""
        jobs.add_row(
            job.id, job.status, ProgressBar(total=max(job.total, 1), completed=job.finished, width=bar),
            f"{job.finished}/{job.total}", str(job.failed), str(job.queued),
            f"{rate:.1f}" if rate else "-", _eta(job.total - job.finished, rate),
            f"${usd(from_micros(job.spent_micros))}{budget}",
        )
        for kind, n in job.failed_by_kind.items():
            failures[kind] = failures.get(kind, 0) + n
    if not snap.jobs:
        jobs.add_row("(no job active or finished in the last hour)", "", "", "", "", "", "", "", "")
    failed = Text("failures: " + ("  ".join(f"{kind} {n}" for kind, n in sorted(failures.items(), key=lambda kv: -kv[1]))
                                  if failures else "none"))
    return Group(
        Panel(account, title="account", title_align="left"),
        Panel(jobs, title="jobs (active, and finished in the last hour)", title_align="left"),
        failed,
        Text("q or Ctrl-C quits", style="dim"),
    )


@contextmanager
def _keys() -> Iterator[Callable[[float], bool]]:
    """A function that waits up to ``timeout`` seconds for ``q`` on a terminal's stdin (read
    key by key, unechoed, meanwhile) and says whether it came; elsewhere it only sleeps."""
    fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    if fd is None:
        yield lambda timeout: time.sleep(timeout) or False
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)  # keys one at a time, unechoed; Ctrl-C still interrupts

    def quit_pressed(timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([fd], [], [], left)
            if ready and os.read(fd, 1) in (b"q", b"Q"):
                return True
        return False

    try:
        yield quit_pressed
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


@click.command("top")
@click.option("--interval", default=1.0, show_default=True, help="Seconds between redraws.")
@click.option("--once", is_flag=True, help="Print one frame and exit (for a script or a log).")
def top(interval: float, once: bool) -> None:
    """A live view of the fleet: each active job's progress, rate, ETA and spend; the account's
    starts per minute and predictions in flight against its limits; failures by kind.
    q or Ctrl-C quits."""
    settings = Settings.from_env()
    if not settings.redis_url:
        raise SettingsError("REDIS_URL is not set: `editpipe top` reads the Redis the workers use")
    state = State.from_url(settings.redis_url, report=lambda message: err.print(message, markup=False))
    rates = Rates()
    if once:
        console.print(render(state.metrics.snapshot(), settings, rates, console.width))
        return
    try:
        with _keys() as quit_pressed, Live(console=console, auto_refresh=False, screen=False) as live:
            while True:
                live.update(render(state.metrics.snapshot(), settings, rates, console.width), refresh=True)
                if quit_pressed(interval):
                    break
    except KeyboardInterrupt:
        pass
