"""``editpipe run``: a manifest start to finish on this machine, continued after a kill.

1. The manifest is planned (nothing paid) and the plan's fingerprint taken: the output root,
   ``--force``, and every run's key and output key in order. The job records it.
2. The run's Redis starts (``pipeline.embedded``): for a paid run without ``REDIS_URL``, the
   one kept in the output root's state folder, locked for this run.
3. The newest unfinished job of the same fingerprint is continued ("continuing job X: N of M
   done, K in flight"): no new plan, no new job; the workers poll the predictions already
   submitted (never submitting them again) and start the runs that never started. Otherwise
   a new job is recorded as before, whose already-done runs are skipped at $0. In a Redis of
   its own the run first releases what the dead processes of an earlier run held
   (``Takeover``) and puts their unacknowledged messages back in the queue; an unfinished
   job of another plan (the manifest changed since) is cancelled: its unstarted runs are
   dropped, its predictions in flight still collected.
4. The workers start, the job is handed to them, its progress is followed (``progress.py``).

Ctrl-C (SIGINT) or SIGTERM: the first pauses the job (``Jobs.pause``: no new submits) and
waits until the predictions in flight are collected, then exits 130 (143 for SIGTERM); a
second stops at once, leaving them in Redis. Either way the job stays unfinished and the
same command continues it. ``--simulate`` runs keep a throwaway Redis: the simulator that
held their predictions dies with the run, so they start afresh (stored outputs found by the
run index are still skipped).
"""

from __future__ import annotations

import hashlib
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Callable

from ..embedded import Embedded, embedded, state_dir_for
from ..ledger import usd
from ..report import finalize_job
from ..settings import Settings
from ..state import JobStatus, State
from ..submission import Prepared, finish_skipped, prepare, submit
from .output import console, err, exit_code, finish, print_failures, print_skipped_rows, print_summary

PLAN_FIELD = "run_plan"  # the job record's field holding its plan's fingerprint
PAUSE_S = 15.0  # a clean stop's pause, renewed every second while the command waits
QUIET_CHECKS = 2  # reads 1 s apart with nothing in flight before a clean stop ends


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the command (a BaseException, so no ``except Exception``
    on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Interrupts:
    """SIGINT and SIGTERM, in the main thread: each raises ``Interrupted`` while
    ``on_signal`` is None, else calls it (once the run is shutting down, a signal hurries
    the shutdown instead of breaking into it)."""

    def __init__(self) -> None:
        self.on_signal: Callable[[], None] | None = None
        self._saved: dict[int, object] = {}

    def __enter__(self) -> "Interrupts":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._saved.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.on_signal is not None:
            self.on_signal()
            return
        raise Interrupted(signum)


def plan_fingerprint(prepared: Prepared, *, force: bool) -> str:
    """What makes "the same command": the output root, ``--force``, and the plan's runs
    (run key and output key of each, in order). A budget edit keeps it; a changed prompt,
    input or option changes a run key, and with it the fingerprint."""
    digest = hashlib.sha256(f"{prepared.storage.root}\n{int(force)}\n".encode())
    for run_key, output_key in prepared.plan.keys_and_outputs():
        digest.update(f"{run_key} {output_key}\n".encode())
    return digest.hexdigest()[:32]


def run_manifest(path: Path, settings: Settings, *, simulate: bool, workers: int, concurrency: int,
                 force: bool) -> int:
    """The ``run`` command; returns its exit code."""
    with Interrupts() as interrupts:
        try:
            prepared = prepare(path, settings, force=force)
            print_skipped_rows(prepared)
            fingerprint = plan_fingerprint(prepared, force=force)
            keep = not simulate and not settings.redis_url
            state_dir = state_dir_for(prepared.storage.root, settings) if keep else None
            with embedded(settings, simulate=simulate, state_dir=state_dir) as live:
                try:
                    return _run(live, prepared, path, fingerprint, interrupts, simulate=simulate,
                                workers=workers, concurrency=concurrency)
                finally:
                    interrupts.on_signal = live.hurry
        except Interrupted as stop:
            err.print(f"Stopped while starting; `editpipe run {path}` picks up from here.", markup=False)
            return 128 + stop.signum


def _run(live: Embedded, prepared: Prepared, path: Path, fingerprint: str, interrupts: Interrupts, *,
         simulate: bool, workers: int, concurrency: int) -> int:
    from workers.celery_app import job_enqueuer

    state = State.from_url(live.settings.redis_url or "")
    if live.state_dir is not None:
        _take_over(live, state)  # its lock proves every process of an earlier run is gone
    # A simulated job's predictions were the simulator's, which died with its run.
    job = None if simulate else state.jobs.unfinished_with(PLAN_FIELD, fingerprint)
    if job is not None and state.jobs.field(job.id, "cancel_requested"):
        job = None  # cancelled: its workers wind it down; this command starts afresh
    if live.private:
        _cancel_abandoned(state, prepared.storage.root, keep=job.id if job else None)
    if job is not None:
        console.print(f"{prepared.manifest.name}: continuing job {job.id}: {job.finished} of {job.total} runs done, "
                      f"{state.takeover.in_flight(job.id)} in flight", markup=False)
        job_id = job.id
        _continue(state, prepared, job)
    else:
        console.print(
            f"{prepared.manifest.name}: {len(prepared.plan.runs)} runs ({len(prepared.done)} already done), "
            f"estimated ${usd(prepared.estimated_usd)}" + (" (simulated API: nothing is paid)" if simulate else ""),
            markup=False,
        )
        job_id = submit(prepared, state, job_enqueuer(live.settings), finalize=finalize_job,
                        extra={PLAN_FIELD: fingerprint})
    if not state.jobs.status(job_id).done:
        revive = (lambda: _take_over(live, state, job_id)) if live.private else None
        live.start_workers(workers, concurrency, on_event=lambda message: err.print(message, markup=False),
                           when_all_died=revive)
        if job is not None:
            _wake(live, job_id)
    try:
        return finish(state, job_id)
    except Interrupted as first:
        return _stop(live, state, job_id, path, first.signum, interrupts, simulate=simulate)


def _take_over(live: Embedded, state: State, job_id: str | None = None) -> None:
    """Everything the run's dead processes held, released now (not when each lease lapses):
    only when none of them can be alive, a Redis of this run's own whose workers are all
    dead. At the run's start (no ``job_id``), finalized jobs are dropped too; with
    ``job_id`` (its workers died mid-run), the job is set moving again."""
    from workers.takeover import restore_unacked

    state.takeover.release_dead()
    restore_unacked(live.settings)
    if job_id is None:
        state.takeover.forget_finished()  # their records are in storage; the Redis keeps the rest
    else:
        _wake(live, job_id)


def _wake(live: Embedded, job_id: str) -> None:
    from workers.takeover import wake

    wake(live.settings, job_id, pumps_directly=not live.private)


def _continue(state: State, prepared: Prepared, job: JobStatus) -> None:
    """Make an unfinished job of this plan ready for its workers again."""
    if job.status == "queued":
        # Killed before its workers took it, perhaps while its done runs were being skipped.
        finish_skipped(prepared, state, job.id)
    state.jobs.unpause(job.id)
    status = state.jobs.status(job.id)
    if status.finished >= status.total and not status.done:
        finalize_job(state, prepared.storage, job.id)  # its own finalize died with the run
        state.finalized(job.id)


def _cancel_abandoned(state: State, root: str, keep: str | None) -> None:
    """Cancel the unfinished jobs of this output root other than ``keep`` (their manifest has
    changed since): the workers would otherwise go on paying for a plan nobody runs. Their
    predictions in flight are still collected."""
    for status in state.jobs.recent(1000):
        if status.done or status.id == keep or status.output != root:
            continue
        if state.jobs.field(status.id, "cancel_requested"):
            continue
        in_flight = state.takeover.in_flight(status.id)
        state.jobs.cancel(status.id)
        err.print(f"job {status.id} was left unfinished by another version of this manifest: it is cancelled "
                  f"(its unstarted runs are dropped; its {in_flight} prediction(s) in flight are still collected)",
                  markup=False)


def _stop(live: Embedded, state: State, job_id: str, path: Path, signum: int, interrupts: Interrupts, *,
          simulate: bool) -> int:
    """The first Ctrl-C (or SIGTERM): pause the job, collect what is in flight, exit; a second
    Ctrl-C on the way stops at once."""
    again = "the same command" if simulate else f"`editpipe run {path}`"
    try:
        state.jobs.pause(job_id, PAUSE_S)  # first: no submit starts from here on
        in_flight = state.takeover.in_flight(job_id)
        err.print("Stopping cleanly: no new runs are submitted"
                  + (f"; the {in_flight} prediction(s) in flight are collected first" if in_flight else "")
                  + ". Press Ctrl-C again to stop at once"
                  + ("." if not in_flight else " (they are lost with the simulator)." if simulate
                     else " (the next run collects them instead)."), markup=False)
        status = _drain(state, job_id)
    except Interrupted:
        interrupts.on_signal = live.hurry
        live.hurry()
        status = state.jobs.status(job_id)
        err.print(f"Stopped at once: {status.finished} of {status.total} runs done, "
                  f"{state.takeover.in_flight(job_id)} in flight."
                  + ("" if simulate else f" {again} continues job {job_id}: what is in flight is collected, "
                     "not paid again."), markup=False)
        return 128 + signum
    if status.done:
        print_summary(status)
        print_failures(state, job_id)
        return exit_code(status)
    err.print(f"Stopped: {status.finished} of {status.total} runs done, none in flight."
              + (f" {again} starts over (stored outputs are skipped)." if simulate
                 else f" {again} continues job {job_id}."), markup=False)
    return 128 + signum


def _drain(state: State, job_id: str) -> JobStatus:
    """Keep the job paused until nothing is in flight (``QUIET_CHECKS`` reads in a row, so a
    submit already on its way when the pause began is counted) or the job has ended."""
    quiet = 0
    shown = -1
    while True:
        state.jobs.pause(job_id, PAUSE_S)
        status = state.jobs.status(job_id)
        if status.done:
            return status
        in_flight = state.takeover.in_flight(job_id)
        if in_flight != shown and shown >= 0:
            err.print(f"  {in_flight} in flight…", markup=False)
        shown = in_flight
        # Every run finished: wait for the job's finalize rather than stop just before it.
        quiet = quiet + 1 if in_flight == 0 and status.finished < status.total else 0
        if quiet >= QUIET_CHECKS:
            return status
        time.sleep(1.0)
