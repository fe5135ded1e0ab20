"""Dispatch: how runs reach the provider under the account's limits, and how predictions in
flight are watched without holding a worker each.

The design, and why (measured on a 2-core machine):
- Runs wait in Redis, not as broker messages. A ``FairQueue`` hands them out in turn across
  jobs, so a small job submitted behind a huge one starts at once; a job costs a cursor,
  not a message per run.
- A few *pumps* (``PUMPS`` Celery tasks, each holding a lease) pop runs and submit them as
  fast as ``AccountLimits`` admits: the per-minute rate and the concurrency cap are counted
  in Redis for every process on every machine, unlike Celery's per-worker ``rate_limit``
  (4 workers at ``120/m`` started 327 in one minute).
- A submitted prediction becomes a member of the *due index*, a sorted set by next check
  time. A *poller* takes due members in batches (those due within ``POLL_GATHER_S``, or 2%
  of their model's latency, of a batch's start wait for the next, so that a batch's round
  trips and collect messages serve dozens of checks, not one) and checks each with one GET;
  an image
  takes 10-60 s, so blocking a worker per prediction would need thousands of processes,
  while a sorted-set member costs a few bytes. The first check is timed just after the
  model's latency as seen so far (polls cost CPU in proportion to how often they happen;
  the provider's own ``timings.inference`` sharpens the estimate), then at a growing
  interval, never less than 2 s apart as the provider asks. The prediction's concurrency
  lease is taken (and renewed by each check) to last half a lease past its next check
  (``Dispatch.hold_s``), so a minute-long edit is checked once, not every half lease only to
  keep its slot (bench/inflight at 60 s: 2.3 checks a prediction with the first check at
  half the 60 s lease).
- Completed predictions go to collect tasks (download, store, charge), spread over the
  worker pool, since storage writes are the slow part; eight to a message, since each
  message costs CPU to send, fetch and ack (one to a message, ``bench/overhead``'s workers
  used 19.6-19.8 s of CPU for 2,000 runs; eight to a message, 14.9-16.0 s).

Faults: every piece of work lives in Redis, held by a lease that expires by itself, never
only in a broker message. A pump's slice and the poller hold task leases (``workers.tasks``,
13 s); a run popped by a pump leaves a start check in the due index (due just after the
run's start claim, which outlives the longest submit, would end); due members a poller took
come due again after ``DUE_LEASE_S``; a completed prediction keeps a check in the index until
it is collected (after ``COLLECT_CLAIM_S``, a dead collector's claim); a run to be tried
again later (a transient error, a claim held by another execution, an upload in progress, a
resumed run the queue would not take back) is a start check due then
(``Dispatch.start_later``), never a countdown message. The messages (``Tasks``) are wake-ups
only: a lost one costs the few seconds until a worker's watchdog (``workers.watchdog``) sees
work waiting whose lease nobody holds and starts its task again. The broker's visibility
timeout (600 s) then matters only for the message that hands a new job (or a resume) to the
workers, which a worker takes and acts on within milliseconds.

What this needs from the task queue (wake the pumps or the poller, hand completed
predictions to collection, finalize a job) it gets as a ``Tasks`` object, which
``workers.tasks`` implements over Celery; the steps can run without a worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .execution import COLLECT_CLAIM_S, Context, Next, poll_run, slot_holder, start_claim_s, start_run
from .logs import run_context
from .provider import Prediction
from .state import Due
from .state.metrics import POLL_OUTCOMES

SLICE_S = 3.0  # how long a pump or poller task runs before it hands over to a new message
DUE_LEASE_S = 30.0
START_AFTER_CLAIM_S = 2.0  # a popped run's start check comes due this long after its claim would end
POLL_BATCH = 200
# The least time between the starts of two batches of checks, unless the first was full.
# Checks come due one by one (at ultra, one every 12 ms), and a batch's own costs (Redis
# round trips, a collect message) are the same for one as for forty: bench/inflight sent
# 1,876 collect messages for 2,000 runs with each checked as it came due. A check is late by
# this at most, and by no more than ``GATHER_SHARE`` of its model's latency: a completed
# prediction holds its slot until collected (a 3 s edit 0.5 s late holds it 15% longer).
POLL_GATHER_S = 0.5
GATHER_SHARE = 0.02
START = Due.START  # the attempt number of a start check (see ``pump``)
ADMIT_WAIT_S = 0.25  # the longest a pump waits for the limits with a run's claim in hand
ADMIT_EARLY_S = 0.0003
# The first check comes this much after the expected latency, so that a prediction is found
# completed at its first check: bench/inflight's 20 s edits were checked 2.5 times each with
# the first check at 0.85 × the latency seen; 1.00 times once the latency is known, with it
# just after the provider's own timing. A completed prediction waits 5% longer for collection.
FIRST_POLL_AFTER = 1.05

Completed = list[tuple[str, int, Prediction]]


class Tasks(Protocol):
    """What the steps need from the task queue (``workers.tasks`` implements it over Celery).

    Each is a wake-up or a hand-over that the state in Redis backs: a message lost with a
    worker delays its work by seconds (the watchdog, a due member's check), never loses it.
    """

    def wake_pumps(self) -> None:
        """Make sure pumps are running (runs are waiting in the fair queue)."""

    def wake_poller(self) -> None:
        """Make sure the poller is running (a prediction joined the due index)."""

    def collect(self, completed: Completed) -> None:
        """Collect these completed predictions (store, charge, finish each run)."""

    def finalize(self, job_id: str) -> None:
        """Write the job's records: its last run has finished."""


class Dispatch:
    """The queue of runs and the due index, and what follows each step of a run."""

    def __init__(self, ctx: Context, tasks: Tasks):
        self.ctx = ctx
        self.tasks = tasks
        self.state = ctx.state
        # model -> (latency seen, or None; while None, when its oldest prediction was
        # submitted, if known; when this was read)
        self._latency: dict[str, tuple[float | None, float | None, float]] = {}

    # runs waiting to start
    def add_job(self, job_id: str) -> None:
        """Hand a recorded job's runs to the pumps (one queue entry per job, not per run)."""
        total, priority = self.state.jobs.fields(job_id, "total", "priority")
        self.state.fair.push(job_id, int(total or 0), int(priority or 1))
        self.tasks.wake_pumps()

    def resume(self, job_id: str, indices: list[int]) -> None:
        """Hand chosen runs of a job out again (``editpipe resume``). A finalized job left the
        queue; it comes back with its runs handed out, so that only these are."""
        total, priority = self.state.jobs.fields(job_id, "total", "priority")
        self.state.fair.push(job_id, int(total or 0), int(priority or 1), handed_out=int(total or 0))
        for index in indices:
            if not self.state.fair.requeue(job_id, index):
                self.start_later(job_id, index, 0, 0.0)
        self.tasks.wake_pumps()

    def start_later(self, job_id: str, index: int, failures: int, delay_s: float, settled: Sequence[str] = (),
                    wake_poller: bool = True) -> None:
        """File the run's start in the due index, due in ``delay_s``, replacing ``settled`` in
        the same step: the poller starts it then. Never a countdown message, which a worker
        holds unacknowledged until it is due, and which its death would hold until the
        broker's visibility timeout."""
        now = time.time()
        self.schedule(list(settled), [(Due(job_id, index, START, failures, now, now).member, delay_s)])
        if wake_poller:
            self.tasks.wake_poller()

    def follow(self, job_id: str, index: int, step: Next, settled: Sequence[str] = (),
               wake_poller: bool = True) -> None:
        """Carry out what a step returned: a due-index entry, the run back in the fair queue,
        a message (collect, finalize), or nothing. ``settled`` are due members the step
        replaces; they go only once the run's next step is filed (in the same step, or
        after), so a run is never in neither place. ``wake_poller=False``: the caller wakes
        it itself (see ``_start``)."""
        if step.action == "submit":
            self.start_later(job_id, index, step.failures, step.delay_s, settled, wake_poller)
            return
        if step.action == "wait":
            if self.state.fair.requeue(job_id, index):
                self.schedule(list(settled), [])
            else:  # not handed out by the queue, or its job left it: the poller starts it
                self.start_later(job_id, index, step.failures, step.delay_s, settled, wake_poller)
            self.tasks.wake_pumps()
            return
        if step.action == "poll":
            # Just after the expected completion; at once for a prediction found already
            # submitted (a redelivery), whose time is unknown.
            model = self.state.runs.run(job_id, index).model
            delay = self.first_poll_s(model) if step.delay_s else 0.0
            now = time.time()
            if step.delay_s:
                self._note_submit(model, now)
            self.schedule(list(settled), [(Due(job_id, index, 0, step.failures, now, now).member, delay)])
            if wake_poller:
                self.tasks.wake_poller()
            return
        if settled:
            self.schedule(list(settled), [])
        if step.action == "collect" and step.prediction is not None:
            self.tasks.collect([(job_id, index, step.prediction)])
        elif step.action == "finalize":
            self.tasks.finalize(job_id)

    # predictions in flight
    def schedule(self, removed: list[str], added: list[tuple[str, float]]) -> float | None:
        """Replace members of the due index; returns seconds until the earliest is due."""
        return self.state.due.schedule(removed, added)

    def take_due(self, n: int = POLL_BATCH) -> list[Due]:
        return self.state.due.take(n, DUE_LEASE_S)

    def _latency_read(self, model: str) -> tuple[float | None, float | None]:
        now = time.monotonic()
        cached = self._latency.get(model)
        if cached is None or now - cached[2] > 1.0:
            cached = self._latency[model] = (*self.state.latency.read(model), now)
        return cached[0], cached[1]

    def expected_latency(self, model: str) -> float | None:
        """The model's latency as seen so far (shared in Redis; read at most once a second)."""
        return self._latency_read(model)[0]

    def latency_floor(self, model: str) -> float:
        """While no prediction of the model has been seen completed: how long ago its oldest
        was submitted (0 when its latency is known, or no submit was noted).

        None of its predictions finished in that time, so an edit of this model probably
        takes at least that long: a check sooner than that, of a younger prediction, would
        most likely find it running. Checks are spaced by it (up to ``poll_max_s``) instead
        of the provider's plain 2 s, 3 s, 4.5 s...: at 60 s, a fresh deployment's first
        minute of predictions were checked 5 to 7 times each on the plain schedule. A model
        that turns out faster is found late by less than its own latency: a prediction
        submitted ``a`` seconds after the oldest is checked ``a`` seconds after its submit,
        and the oldest, checked at twice its age at the latest, shows the latency by twice
        that latency."""
        expected, since = self._latency_read(model)
        if expected is not None or since is None:
            return 0.0
        return max(0.0, time.time() - since)

    def _note_submit(self, model: str, submitted_at: float) -> None:
        """Note the first submit of a model whose latency is unknown (once per process until
        the note is read back: ``latency_floor``)."""
        expected, since = self._latency_read(model)
        if expected is None and since is None:
            self.state.latency.note_unknown(model, submitted_at)
            self._latency[model] = (None, submitted_at, self._latency[model][2])

    def observe_latency(self, model: str, samples: list[float]) -> None:
        """Fold ``samples`` into the moving average of how long the model's predictions take
        (see ``latency_sample``); a poller's batch is written once."""
        new = self.expected_latency(model)
        for seconds in samples:
            new = seconds if new is None else 0.8 * new + 0.2 * seconds
        if new is None:
            return
        self.state.latency.set(model, new)
        self._latency[model] = (new, None, time.monotonic())

    def latency_sample(self, due: "Due", inference_s: float | None) -> float | None:
        """How long a prediction found completed took, as well as the checks can tell; None
        when they cannot (it was seen completed before: a check kept until it is collected).

        It completed between the check before (``due.seen_at``; the submit, for a first
        check) and this one. The provider's own timing of the edit, when it gives one, is a
        lower bound too (the prediction may have queued first); the later of the two lower
        bounds is the sample. Without that timing, the middle of the interval; for a first
        check, just under it. The check before is when it was made, not when it was due: a
        check made late (its poller died and its lease ran out, or the poller was restarted)
        would otherwise count the delay as the model's, and slow every first check after it.
        """
        if due.attempt > 0 and not due.seen_at:
            return None
        elapsed = max(0.0, time.time() - due.submitted_at)
        before = 0.0 if due.attempt == 0 else min(elapsed, max(0.0, due.seen_at - due.submitted_at))
        if inference_s is not None:
            return min(elapsed, max(before, inference_s))
        return 0.9 * elapsed if due.attempt == 0 else (before + elapsed) / 2

    def first_poll_s(self, model: str) -> float:
        """The first check of a new prediction: just after its expected completion, not sooner
        than the provider's 2 s. Its lease is taken to outlast it (``hold_s``)."""
        settings = self.ctx.settings
        expected = self.expected_latency(model)
        if expected is None:
            return max(settings.poll_initial_s, min(settings.poll_max_s, self.latency_floor(model)))
        return max(settings.poll_initial_s, FIRST_POLL_AFTER * expected)

    def gather_s(self, model: str) -> float:
        """How late a check of ``model`` may be made so that it joins a batch: up to
        ``POLL_GATHER_S``, and ``GATHER_SHARE`` of the latency seen (while none is known, of
        ``latency_floor``, which the latency is at least)."""
        expected = self.expected_latency(model)
        latency = expected if expected is not None else self.latency_floor(model)
        return min(POLL_GATHER_S, GATHER_SHARE * latency)

    def hold_s(self, next_check_s: float) -> float:
        """How long a prediction's concurrency lease must last from now when its next check
        (which renews it) is ``next_check_s`` away: half a lease past it, the margin a check
        filed within half a lease always had. If nothing checks it by then (its run left the
        due index), its slot comes back."""
        return next_check_s + self._lease_s() / 2

    def until_expected(self, model: str, submitted_at: float) -> float:
        """Seconds from now until a first check would have been due for a prediction
        submitted at ``submitted_at`` (0 when that time has passed or is unknown)."""
        expected = self.expected_latency(model)
        if expected is None:
            return 0.0
        due_at = submitted_at + FIRST_POLL_AFTER * expected
        return max(0.0, due_at - time.time())

    def _lease_s(self) -> float:
        return self.ctx.limits.concurrency.lease_s if self.ctx.limits is not None else 2 * DUE_LEASE_S

    def next_poll_s(self, model: str, attempt: int) -> float:
        """The check after a prediction was seen running: 1.5 times longer each time, from 2 s
        or 15% of the latency seen; while none is known, no sooner than ``latency_floor``;
        never more than ``poll_max_s``."""
        settings = self.ctx.settings
        expected = self.expected_latency(model)
        base = max(settings.poll_initial_s, 0.15 * (expected or 0.0))
        growing = min(settings.poll_max_s, base * (1.5 ** attempt))
        if expected is None:
            return max(growing, min(settings.poll_max_s, self.latency_floor(model)))
        return growing


def pump(dispatch: Dispatch, token: str, slice_s: float = SLICE_S) -> bool:
    """Submit waiting runs for up to ``slice_s`` seconds, as fast as the limits admit.

    Returns True when runs are left (the caller runs another slice), False when the queue
    is empty.
    """
    ctx = dispatch.ctx
    deadline = time.monotonic() + slice_s
    poller_woken = False
    while time.monotonic() < deadline:
        # Until the run is settled, a start check waits in the due index (added by the pop
        # itself): if this pump dies holding the run, the poller starts it, or finds what
        # its submit left, just after the run's claim would have expired (a start slower
        # than that meets the claim, and files its check again for when the claim ends).
        item = ctx.state.fair.pop_marked(ctx.state.due, start_claim_s(ctx.settings) + START_AFTER_CLAIM_S)
        if item is None:
            return False
        job_id, index, check = item
        step = _start(dispatch, job_id, index, f"{token}:{index}", [check], admit_until=deadline,
                      wake_poller=not poller_woken)
        poller_woken = poller_woken or step.action == "poll"
        if step.action == "wait":
            time.sleep(min(step.delay_s, max(0.0, deadline - time.monotonic())))
    return True


def _start(dispatch: Dispatch, job_id: str, index: int, token: str, settled: Sequence[str], failures: int = 0,
           admit_until: float | None = None, wake_poller: bool = True) -> Next:
    """Submit a run under the account's limits and file what follows; ``settled`` are due
    members this replaces, ``failures`` the transient errors the run met so far. With
    ``admit_until`` (a monotonic deadline), a short wait for the limits is slept with the run
    in hand (see ``_admit_in_place``).

    ``wake_poller=False`` skips waking the poller for a submitted run. A pump wakes it for
    the first run of a slice and again as the slice ends (``workers.tasks.pump``): the
    poller leaves only once the due index is empty, and the first run stays in it for at
    least its first check, so it cannot leave in between. That saves a round trip or two a
    start (the poller's lease is read before each wake)."""
    ctx = dispatch.ctx
    admit = None
    if ctx.limits is not None:
        limits = ctx.limits

        def try_start(holder: str) -> float:
            # Asked once the run is claimed (so its planned run is in this process's cache):
            # the lease lasts past the first check of its prediction.
            model = ctx.state.runs.run(job_id, index).model
            return limits.try_start(holder, hold_s=dispatch.hold_s(dispatch.first_poll_s(model)))

        admit = try_start if admit_until is None else _admit_in_place(try_start, admit_until)
    with run_context(job_id, index):
        step = start_run(ctx, job_id, index, token=token, failures=failures, admit=admit)
        dispatch.follow(job_id, index, step, settled, wake_poller=wake_poller or step.action != "poll")
    return step


def _admit_in_place(try_start: Callable[[str], float], until: float) -> Callable[[str], float]:
    """``try_start``, asked again after its wait for up to ``ADMIT_WAIT_S`` (and not past
    ``until``) instead of handing the run back; a longer wait is returned as before.

    Below 1,000 a minute a start taken late is lost for good (above, a few can be made up:
    ``AccountLimits.from_settings``). A pump that hands the run back, sleeps and pops it
    again asks after the run's checks (claim, budget: Redis round trips), that much
    after the start was due: measured at ultra, 72 starts/s of the 81.7 admitted, with the
    pumps asleep 60% of the time. Waking a little early (``ADMIT_EARLY_S``) and asking again
    at once makes up for the sleep's overshoot and the round trip (80.2 starts/s without it,
    80.9 with it). The bound keeps a cancel or a budget stop from waiting on a run held here
    longer than on one being submitted."""

    def admit(holder: str) -> float:
        give_up = min(until, time.monotonic() + ADMIT_WAIT_S)
        while True:
            wait = try_start(holder)
            if wait == 0 or time.monotonic() + wait > give_up:
                return wait
            time.sleep(max(0.0, wait - ADMIT_EARLY_S))

    return admit


def poll_due(dispatch: Dispatch, batch: int = POLL_BATCH) -> float | None:
    """Check one batch of due predictions; seconds until the next is due (None: none in flight)."""
    return poll_batch(dispatch, batch).next_due_s


@dataclass(frozen=True)
class Polled:
    """What one batch of checks left: seconds until the next member is due (None: nothing in
    flight), whether the batch was full (more may be due already), and how long after its
    start the next batch may wait to gather checks (``Dispatch.gather_s``)."""

    next_due_s: float | None
    full: bool
    gather_s: float = POLL_GATHER_S

    def wait_s(self, elapsed_s: float) -> float:
        """How long to wait before the next batch, this one having taken ``elapsed_s``: until
        the next member is due, and ``gather_s`` after this batch began at the earliest (at
        once after a full batch). Only meaningful when something is in flight."""
        due = self.next_due_s or 0.0
        return due if self.full else max(due, self.gather_s - elapsed_s)


def poll_slice(dispatch: Dispatch, slice_s: float = SLICE_S) -> float | None:
    """Check due predictions in batches for up to ``slice_s`` seconds (``Polled.wait_s`` apart).
    None once nothing is in flight, else how long after the slice the next batch is due (the
    caller hands over to a new task for it)."""
    deadline = time.monotonic() + slice_s
    while True:
        began = time.monotonic()
        polled = poll_batch(dispatch)
        now = time.monotonic()
        if polled.next_due_s is None:
            return None
        wait = polled.wait_s(now - began)
        if wait > deadline - now:
            return wait
        time.sleep(wait)


def poll_batch(dispatch: Dispatch, batch: int = POLL_BATCH) -> Polled:
    """Check one batch of due predictions (at most ``batch``)."""
    ctx = dispatch.ctx
    taken = dispatch.take_due(batch)
    # Members of a job whose Redis state was lost (written by steps in progress at the loss)
    # are dropped: the job is reported lost, and a rebuild starts its runs afresh.
    lost = ctx.state.jobs.unknown(due.job_id for due in taken) if taken else set()
    added: list[tuple[str, float]] = []
    running: list[str] = []
    latest_check = 0.0  # the furthest next check of a prediction seen running
    completed: list[tuple[str, int, Prediction]] = []
    latencies: dict[str, list[float]] = {}
    models: set[str] = set()  # of the predictions checked, for how long the next batch may gather
    polls = dict.fromkeys(POLL_OUTCOMES, 0)  # the batch's checks by outcome, for the metrics
    # The batch's runs and their states in two round trips, not three per prediction. A
    # state read here can only be behind by a collect finishing meanwhile, which the
    # collect's own check catches.
    checks = [due for due in taken if due.attempt != START and due.job_id not in lost]
    ctx.state.runs.load((due.job_id, due.index) for due in checks)
    states = dict(zip(checks, ctx.state.runs.states([(due.job_id, due.index) for due in checks])))
    for due in taken:
        if due.job_id in lost:
            continue
        if due.attempt == START:  # replaced by what follows the start, in the same step
            _start(dispatch, due.job_id, due.index, f"poller:{due.member}", [due.member], failures=due.failures)
            continue
        run = ctx.state.runs.run(due.job_id, due.index)
        models.add(run.model)
        with run_context(due.job_id, due.index, states[due].prediction_id):
            step = poll_run(ctx, due.job_id, due.index, attempt=due.attempt, failures=due.failures,
                            state=states[due])
        polls[_poll_outcome(step, due)] += 1
        if step.action == "poll":
            # Seen running now, unless the check failed for now (or it was seen completed).
            seen = time.time() if due.seen_at and step.failures <= due.failures else due.seen_at
            nxt = Due(due.job_id, due.index, due.attempt + 1, step.failures, due.submitted_at, seen)
            delay = step.delay_s if step.failures > due.failures else dispatch.next_poll_s(run.model, due.attempt)
            # A prediction submitted before the latency was known waits for it once it is.
            delay = max(delay, dispatch.until_expected(run.model, due.submitted_at))
            added.append((nxt.member, delay))
            running.append(slot_holder(due.job_id, due.index))
            latest_check = max(latest_check, delay)
            continue
        if step.action == "collect" and step.prediction is not None:
            sample = dispatch.latency_sample(due, step.prediction.inference_s)
            if sample is not None:
                latencies.setdefault(run.model, []).append(sample)
            # Kept in the index a while as a safety net: if the collect task were lost, the
            # next check finds the run unfinished and collects it again.
            added.append((Due(due.job_id, due.index, due.attempt + 1, 0, due.submitted_at).member,
                          COLLECT_CLAIM_S + 15))
            completed.append((due.job_id, due.index, step.prediction))
            continue
        dispatch.follow(due.job_id, due.index, step)
    if running and ctx.limits is not None:
        ctx.limits.heartbeat_many(running, hold_s=dispatch.hold_s(latest_check))
    for model, samples in latencies.items():
        dispatch.observe_latency(model, samples)
    if checks:
        ctx.state.metrics.record_polls(polls, latencies)
    if completed:
        dispatch.tasks.collect(completed)
    gather = min(map(dispatch.gather_s, models), default=POLL_GATHER_S)
    return Polled(dispatch.schedule([d.member for d in checks], added), full=len(taken) >= batch, gather_s=gather)


def _poll_outcome(step: Next, due: Due) -> str:
    """A check's outcome as the metrics count it: the prediction still ``running`` (or the
    check was answered 429, which never counts against a run), found ``completed``, the check
    met an ``error`` (counted against the run), or ``other`` (it failed, or the run had
    finished or had no prediction to check)."""
    if step.action == "poll":
        return "error" if step.failures > due.failures else "running"
    return "completed" if step.action == "collect" else "other"
