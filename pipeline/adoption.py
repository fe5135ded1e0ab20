"""Adoption: a submit whose answer was lost is looked for among the account's recent
predictions before the run is submitted again, as the provider asks ("check your recent
predictions for a matching task; only resubmit if none exists"). A lost answer is a
connection that dropped after the request was sent, a worker that died with it on the wire,
or a 5xx that came back without a task id (the provider may have made the task anyway).

What is matched. The provider's list (``POST /api/v3/predictions``) carries no input, so a
prediction can be matched only by its model and its creation time. Every submit is recorded
account-wide before its request is sent, with Redis's time (``state.lost_submits``); a lost
answer's prediction, if the provider made one, was created between that start and the
moment the loss was seen (for a worker that died with the submit on the wire, its deadline).
That window is turned into the provider's clock with the offset the answered submits measure
(each answer's ``created_at`` lies between its submit's start and its answer: a bound on the
offset each time; without recent samples, ``SKEW_S`` either way), widened by ``MARGIN_MS``.
A run adopts a prediction only when all of these hold, read after the list:
1. it is the only one, in the run's window, that no run knows (known ids are recorded in the
   same step as the run's prediction id, account-wide);
2. no other submit could have made it: no other run's record (on the wire, lost, or given up)
   covers its creation time. A submit answered but not recorded yet is still on the wire, so
   its prediction is never taken for another's.
Then it is recorded as the run's prediction (one atomic step that checks the run is still
looking and the id still unknown): polled, collected and charged once, like any other, with
no ``unconfirmed_submit`` line. A verified webhook callback settles it too
(``settle_by_callback``): its URL names the run that made the prediction.

Why it is safe. Each submit makes at most one prediction, inside its own window. If a run
R made prediction p, p is known, or R's record covers it: no other run can adopt p. So a
run never adopts another run's prediction. What it can adopt wrongly is a prediction no
editpipe run made (the website, another editpipe on another Redis with the same key) that
fell into its window while its own submit made nothing: the window is as tight as the
submit's round trip and the clock offset allow (milliseconds where the provider is near),
and two unknown predictions in it mean no adoption at all.

When it is not found. The list may lag, so a run looks at ``LOOKS_AT_S`` after the loss
(keeping its concurrency slot and its budget reservation meanwhile). Nothing found by the
last look: the provider made nothing; the run is submitted again, paying once. Ambiguous
(two candidates, or one another submit may have made) for ``ambiguous_for_s`` (long enough
for a submit still on the wire to be answered or found lost): the run does not guess. Its
prediction was then most likely made and billed, and a new submit would surely be; so it
is charged an ``unconfirmed_submit`` line (the ledger keeps matching the bill) and fails,
retryable, for a person to resume (``execution``). Its record stays as a tombstone, so that
what it may have made is never given to another run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Literal

from .errors import AuthFailed, ProviderError, ProviderTransient
from .provider import Prediction, WaveSpeedClient
from .state import State
from .state.lost_submits import SubmitRecord

log = logging.getLogger(__name__)
LOOKS_AT_S = (2.0, 5.0, 10.0, 20.0, 30.0)  # after the loss; the provider's list may lag
SKEW_S = 2.0  # the clock offset's bound without recent samples
MARGIN_MS = 2  # on each side of a window measured from fresh samples (drift)
SAMPLES_FRESH_S = 60.0


@dataclass(frozen=True)
class Found:
    """What a look found. ``adopted``: the run has ``prediction_id`` now (poll it).
    ``look_again``: look once more after ``delay_s``. ``nothing``: the provider made none; submit
    again. ``ambiguous``: the run's prediction cannot be told apart from others (or the list
    cannot be read at all): book it as possibly paid.
    ``unsent``: the run has no record, so its submit was never sent."""

    outcome: Literal["adopted", "look_again", "nothing", "ambiguous", "unsent"]
    delay_s: float = 0.0
    prediction_id: str | None = None
    candidates: int = 0
    with_worker: bool = False  # the submit's worker died with it on the wire


@dataclass(frozen=True)
class Offset:
    """Provider time minus Redis time lies in [lo_ms, hi_ms]."""

    lo_ms: int
    hi_ms: int

    @classmethod
    def of(cls, samples: list[tuple[int, int, int]], now_ms: int) -> "Offset":
        fresh = [(lo, hi) for lo, hi, at in samples if now_ms - at <= SAMPLES_FRESH_S * 1000]
        if fresh:
            lo, hi = max(s[0] for s in fresh), min(s[1] for s in fresh)
            if lo <= hi:  # consistent: a steady offset
                return cls(lo - MARGIN_MS, hi + MARGIN_MS)
        return cls(int(-SKEW_S * 1000), int(SKEW_S * 1000))

    def window(self, start_ms: int, until_ms: int) -> tuple[int, int]:
        """A submit's window, in the provider's clock (``created_at`` is truncated to the ms)."""
        return start_ms + self.lo_ms - 1, until_ms + self.hi_ms


def created_ms(prediction: Prediction) -> int | None:
    """A prediction's ``created_at`` in ms since the epoch, or None when it has none."""
    if not prediction.created_at:
        return None
    try:
        stamp = datetime.fromisoformat(prediction.created_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return int(stamp.timestamp() * 1000)


def _iso(ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _next_look_s(elapsed_s: float) -> float | None:
    later = [at for at in LOOKS_AT_S if at > elapsed_s + 0.05]
    return later[0] - elapsed_s if later else None


def look(state: State, client: WaveSpeedClient, job_id: str, index: int, *, ambiguous_for_s: float) -> Found:
    """Look once for the prediction of the run's lost submit (see the module's docstring).
    A record still on the wire is one whose worker died with it (a later start found it):
    its window ends at its deadline. On ``nothing`` and ``ambiguous`` the run's record is a
    tombstone already."""
    record = state.lost.lost(job_id, index, with_worker=True)
    if record is None:
        return Found("unsent")
    if record.state != "lost":
        return Found("look_again", LOOKS_AT_S[0])  # a tombstone's run is being submitted again
    offset = Offset.of(state.lost.clock(), record.lost_at_ms or record.start_ms)
    low, high = offset.window(record.start_ms, record.until_ms)
    try:
        listed = list(client.iter_recent_predictions(model=record.model, created_after=_iso(low - 1000),
                                                     created_before=_iso(high + 1000)))
    except AuthFailed:
        state.lost.give_up(record)  # the job stops; its run is booked as possibly paid
        raise
    except ProviderError as exc:
        # The list cannot be read: for now (look again, within the same bound), or at all
        # (refused: then nothing can be told apart).
        lost_for_s = max(0.0, (state.lost.snapshot([]).now_ms - (record.lost_at_ms or 0)) / 1000)
        if isinstance(exc, ProviderTransient) and lost_for_s < ambiguous_for_s:
            return Found("look_again", max(LOOKS_AT_S[0], exc.retry_after or 0.0))
        log.warning("run %s of %s: its lost submit answer cannot be looked for: %s", index, job_id, exc)
        state.lost.give_up(record)
        return Found("ambiguous", with_worker=record.end_ms == record.deadline_ms)
    in_window = {p.id: p for p in listed if (ms := created_ms(p)) is not None and low <= ms <= high}
    # Read after the list: a prediction made meanwhile by a submit answered meanwhile is known
    # by now, or its submit is still on the wire.
    snap = state.lost.snapshot(in_window)
    offset = Offset.of(snap.clock, snap.now_ms)
    candidates = [p for p in in_window.values() if p.id not in snap.owners]
    elapsed_s = max(0.0, (snap.now_ms - (record.lost_at_ms or snap.now_ms)) / 1000)
    if len(candidates) == 1:
        found = candidates[0]
        if not _others_cover(snap.records, record, offset, created_ms(found) or 0):
            outcome = state.lost.adopt(job_id, index, found.id)
            if outcome == "adopted":
                log.info("run %s of %s: its lost submit answer found: prediction %s", index, job_id, found.id)
                return Found("adopted", prediction_id=found.id, candidates=1)
            if outcome in ("finished", "submitted"):
                return Found("adopted", prediction_id=state.runs.prediction_of(job_id, index), candidates=1)
            return Found("look_again", LOOKS_AT_S[0], candidates=1)  # taken meanwhile: look again
    if not candidates:
        wait = _next_look_s(elapsed_s)
        if wait is None:
            state.lost.give_up(record)
            return Found("nothing")
        return Found("look_again", wait)
    if elapsed_s >= ambiguous_for_s:
        log.warning("run %s of %s: its lost submit answer cannot be told apart: %d unknown prediction(s) in its "
                    "window of %d ms (clock offset known to %d ms)", index, job_id, len(candidates), high - low,
                    offset.hi_ms - offset.lo_ms)
        state.lost.give_up(record)
        return Found("ambiguous", candidates=len(candidates), with_worker=record.end_ms == record.deadline_ms)
    # Another submit on the wire resolves within its deadline; a lost one may be found.
    return Found("look_again", _next_look_s(elapsed_s) or LOOKS_AT_S[-1] - LOOKS_AT_S[-2],
                 candidates=len(candidates))


def _others_cover(records: list[SubmitRecord], own: SubmitRecord, offset: Offset, at_ms: int) -> bool:
    """Whether a submit of another run (on the wire, lost, or a tombstone) may have made a
    prediction created at ``at_ms``. The run's own earlier submits made it for the same
    request, so they do not count."""
    for other in records:
        if (other.job_id, other.index) == (own.job_id, own.index) or other.model != own.model:
            continue
        low, high = offset.window(other.start_ms, other.until_ms)
        if low <= at_ms <= high:
            return True
    return False


def settle_by_callback(state: State, job_id: str, index: int, prediction_id: str) -> bool:
    """A verified webhook callback for the run named ``prediction_id``: when the run's submit
    answer was lost (and it is looking for it), that is its prediction, since only the run's
    own submit gave the provider that URL. True when this settled the run; False when it had
    its prediction already, was not looking, or another run knows the id."""
    return state.lost.adopt(job_id, index, prediction_id) == "adopted"
