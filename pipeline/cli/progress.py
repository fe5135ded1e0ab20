"""A job's progress while ``run``, ``submit --wait`` and ``schedules run --wait`` follow it.

On a terminal: a rich progress bar, redrawn in place. Anywhere else (cron, CI, a log file, a
pipe): one plain line every ``PLAIN_EVERY_S`` seconds, the first at once and the last when the
job is finalized, with no ANSI codes and no carriage returns, so a log keeps it readable::

    2026-12-03T09:10:05Z job-id: 120/400 done (118 succeeded, 2 failed, 0 skipped) · $11.80 · 3.9 runs/s · ETA 1m12s

The rate is taken over the last ``RATE_WINDOW_S`` seconds (what the job does now, not its
average since it started); the ETA is shown only when there is a rate to divide by.
"""

from __future__ import annotations

import time
from collections import deque
from datetime import datetime, timezone
from typing import Callable, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..ledger import usd
from ..state import JobStatus, State

PLAIN_EVERY_S = 5.0
RATE_WINDOW_S = 30.0
MIN_RATE_SPAN_S = 1.0  # a rate over less than this is noise


def format_duration(seconds: float) -> str:
    """``45s``, ``1m12s``, ``2h03m``, ``3d04h``: short, and exact enough for an ETA."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def format_rate(per_s: float) -> str:
    """``3.9 runs/s``, or per minute when under one every ten seconds (``4.2 runs/min``)."""
    if per_s >= 10:
        return f"{per_s:.0f} runs/s"
    if per_s >= 0.1 or per_s == 0:
        return f"{per_s:.1f} runs/s"
    return f"{per_s * 60:.1f} runs/min"


def eta_s(remaining: int, per_s: float | None) -> float | None:
    """Seconds left at ``per_s``; None when it cannot be computed (no rate, or a stalled job)."""
    if per_s is None or per_s <= 0 or remaining < 0:
        return None
    return remaining / per_s


class RateWindow:
    """Runs finished per second over the last ``window_s`` seconds of samples."""

    def __init__(self, window_s: float = RATE_WINDOW_S):
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def add(self, t: float, finished: int) -> None:
        self.samples.append((t, finished))
        # Keep one sample at or before the window's start, so the span covers the whole window.
        while len(self.samples) > 2 and self.samples[1][0] <= t - self.window_s:
            self.samples.popleft()

    def rate(self) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, f0), (t1, f1) = self.samples[0], self.samples[-1]
        if t1 - t0 < MIN_RATE_SPAN_S:
            return None
        return max(0, f1 - f0) / (t1 - t0)


def plain_line(status: JobStatus, per_s: float | None, at: datetime, elapsed_s: float | None = None) -> str:
    """One progress line: when, the job, runs done of planned, counts, spend, rate, ETA (or,
    once the job is finalized, its end state and how long this command followed it)."""
    stamp = at.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    spent = f"${usd(status.spent_usd)}"
    if status.budget_usd is not None:
        spent += f" of ${usd(status.budget_usd)}"
    parts = [
        f"{stamp} {status.id}: {status.finished}/{status.total} done "
        f"({status.succeeded} succeeded, {status.failed} failed, {status.skipped} skipped)",
        spent,
    ]
    if per_s is not None:
        parts.append(format_rate(per_s))
    if status.done:
        parts.append(status.status + (f" after {format_duration(elapsed_s)}" if elapsed_s is not None else ""))
    else:
        left = eta_s(status.total - status.finished, per_s)
        if left is not None:
            parts.append(f"ETA {format_duration(left)}")
    return " · ".join(parts)


class PlainProgress:
    """Prints ``plain_line`` to ``out`` at once, then every ``every_s`` seconds, and at the end."""

    def __init__(self, out: TextIO, every_s: float = PLAIN_EVERY_S,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        self.out, self.every_s, self.clock, self.wall = out, every_s, clock, wall
        self.window = RateWindow()
        self.started: float | None = None
        self.last_printed: float | None = None

    def __call__(self, status: JobStatus) -> None:
        now = self.clock()
        if self.started is None:
            self.started = now
        self.window.add(now, status.finished)
        if self.last_printed is None or now - self.last_printed >= self.every_s or status.done:
            self.last_printed = now
            line = plain_line(status, self.window.rate(), self.wall(), now - self.started)
            self.out.write(line + "\n")
            self.out.flush()


def interactive(*consoles: Console) -> bool:
    """A bar only when every stream the command writes to is a terminal (rich's own test,
    which honours FORCE_TERMINAL / TTY_INTERACTIVE)."""
    return all(c.is_terminal for c in consoles)


def follow_job(state: State, job_id: str, out: Console, *, bar: bool) -> JobStatus:
    """Follow a job until it is finalized: a bar on ``out`` when ``bar``, plain lines otherwise."""
    from ..submission import follow

    if not bar:
        return follow(state, job_id, PlainProgress(out.file))

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("ok {task.fields[ok]} · failed {task.fields[failed]} · ${task.fields[spent]}"),
        TimeElapsedColumn(),
        console=out,
        transient=False,
    ) as progress:
        task = progress.add_task(job_id, total=None, ok=0, failed=0, spent="0.00")

        def show(status: JobStatus) -> None:
            progress.update(
                task,
                total=status.total,
                completed=status.finished,
                ok=status.succeeded + status.skipped,
                failed=status.failed,
                spent=usd(status.spent_usd),
            )

        return follow(state, job_id, show)
