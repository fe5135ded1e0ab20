"""Lost submits: every submit on the wire or whose answer was lost, account-wide, and the
prediction ids runs know, so that ``pipeline.adoption`` can tell a lost answer's prediction
apart from everything else the provider's list of recent predictions shows.

Keys (``keys``): ``SUBMITS`` (run member -> submit record: job, index, attempt, model,
start, deadline, end, state) with ``SUBMITS_BY_START``, ``GAVE_UP`` (tombstones: records of
lost answers not found) with ``GAVE_UP_BY_END``, ``KNOWN_PREDICTIONS`` (prediction id -> the
run that has it) with ``KNOWN_AT``, and ``PROVIDER_CLOCK`` (samples of the offset between
the provider's clock and Redis's). Times are Redis's (``TIME``), in ms.

Guaranteed, each by one atomic script: a submit's record exists from before its request is
sent (``on_wire``) until its prediction id is recorded and known account-wide in the same
step (``answered``), until it is known to have created nothing (``settled``), or until a
lost answer's record turns into a tombstone kept for the retention (``give_up``). So at
every instant each prediction editpipe's submits created is known, or its submit's record
is there and covers its creation time. ``adopt`` gives a run a prediction only while the
run is still looking (no result, no prediction, its record lost) and no run knows the id.
Known ids and tombstones are kept at least ``KEEP_KNOWN_S`` and back to before the oldest
open record (only a look from an open record reads them); nothing past ``RETENTION_S`` (the
provider lists 7 days). So their number is what an hour of submits makes, unless a record
stays open longer (a worker died with it and its run has not started again yet).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from . import keys
from .connection import Connection
from .metrics import QUEUE_WAIT, bounds_arg

KEEP_KNOWN_S = 3600
RETENTION_S = 7 * 24 * 3600
CLOCK_SAMPLES = 64


def member(job_id: str, index: int) -> str:
    """The run's name in the submit records and among the known ids' owners."""
    return f"{job_id}#{index}"


@dataclass(frozen=True)
class SubmitRecord:
    """One submit: ``state`` ``wire`` (sent, not answered yet), ``lost`` (its answer was lost;
    ``end_ms`` bounds when it can have created its prediction) or ``gave_up`` (a tombstone).
    ``deadline_ms``: by when a submit on the wire has created its prediction or never will."""

    job_id: str
    index: int
    attempt: int
    model: str
    state: str
    start_ms: int
    deadline_ms: int
    end_ms: int | None = None
    lost_at_ms: int | None = None

    @classmethod
    def from_json(cls, raw: str) -> "SubmitRecord":
        d = json.loads(raw)
        opt = lambda name: int(d[name]) if d.get(name) is not None else None  # noqa: E731
        return cls(job_id=str(d["job"]), index=int(d["index"]), attempt=int(d["attempt"]), model=str(d["model"]),
                   state=str(d["state"]), start_ms=int(d["start_ms"]), deadline_ms=int(d["deadline_ms"]),
                   end_ms=opt("end_ms"), lost_at_ms=opt("lost_at_ms"))

    @property
    def member(self) -> str:
        return member(self.job_id, self.index)

    @property
    def until_ms(self) -> int:
        """The latest it can have created its prediction at: its end once lost, else its deadline."""
        return self.end_ms if self.end_ms is not None else self.deadline_ms


@dataclass(frozen=True)
class Snapshot:
    """What a look needs, read in one step after the provider's list was read."""

    now_ms: int
    owners: dict[str, str]  # of the ids asked about, those a run knows -> that run's member
    records: list[SubmitRecord]  # every submit record (on the wire, lost) and tombstone
    clock: list[tuple[int, int, int]]  # (lo, hi, at): provider time - Redis time is in [lo, hi]


def _sample(raw: str) -> tuple[int, int, int]:
    lo, hi, at = (int(float(part)) for part in raw.split("|"))
    return lo, hi, at


class LostSubmits:
    """Submit records and known prediction ids (see the module's docstring)."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._on_wire = conn.script("submit_on_wire.lua")
        self._answered = conn.script("submit_answered.lua", "submit_lib.lua", "metrics_lib.lua")
        self._lost = conn.script("submit_lost.lua")
        self._adopt = conn.script("submit_adopt.lua", "submit_lib.lua")
        self._gave_up = conn.script("submit_gave_up.lua")

    def on_wire(self, job_id: str, index: int, attempt: int, model: str, deadline_s: float) -> int:
        """Just before a submit's request is sent (after ``Runs.begin_submit``); returns its start."""
        record = json.dumps({"job": job_id, "index": index, "attempt": attempt, "model": model})
        return int(self._on_wire(
            keys=[keys.SUBMITS, keys.SUBMITS_BY_START, keys.KNOWN_PREDICTIONS, keys.KNOWN_AT, keys.GAVE_UP,
                  keys.GAVE_UP_BY_END],
            args=[member(job_id, index), record, int(deadline_s * 1000), KEEP_KNOWN_S * 1000, RETENTION_S * 1000]))

    def answered(self, job_id: str, index: int, prediction_id: str, created_ms: int | None) -> None:
        """The submit answered: the run's prediction id, recorded and known in one step
        (replaces ``Runs.record_prediction`` for a submit's answer); at the run's first
        answered submit, its queue wait is observed in the same step (``metrics``)."""
        self._answered(
            keys=[keys.job(job_id, "pred"), keys.job(job_id, "submitting_open"), keys.SUBMITS,
                  keys.SUBMITS_BY_START, keys.KNOWN_PREDICTIONS, keys.KNOWN_AT, keys.PROVIDER_CLOCK,
                  keys.fair_queue()[1], keys.job(job_id, "failed"), keys.histogram(QUEUE_WAIT.name)],
            args=[str(index), member(job_id, index), prediction_id, member(job_id, index),
                  "" if created_ms is None else str(created_ms), CLOCK_SAMPLES, job_id, bounds_arg(QUEUE_WAIT)])

    def settled(self, job_id: str, index: int) -> None:
        """The submit is known to have created nothing (refused, or never reached the provider):
        it leaves the wire (replaces ``Runs.end_submit`` there)."""
        pipe = self._r.pipeline(transaction=True)
        pipe.hdel(keys.job(job_id, "submitting_open"), str(index))
        pipe.hdel(keys.SUBMITS, member(job_id, index))
        pipe.zrem(keys.SUBMITS_BY_START, member(job_id, index))
        pipe.execute()

    def lost(self, job_id: str, index: int, *, with_worker: bool = False) -> SubmitRecord | None:
        """Mark the run's submit as lost (seen now; ``with_worker``: its worker died with it,
        so it can have created its prediction up to its deadline). None: the run has no
        record, so its submit was never sent."""
        raw = self._lost(keys=[keys.SUBMITS], args=[member(job_id, index), "deadline" if with_worker else "now"])
        return SubmitRecord.from_json(raw) if raw else None

    def snapshot(self, prediction_ids: Iterable[str]) -> Snapshot:
        ids = list(dict.fromkeys(prediction_ids))
        pipe = self._r.pipeline(transaction=True)
        pipe.time()
        if ids:
            pipe.hmget(keys.KNOWN_PREDICTIONS, ids)
        pipe.hvals(keys.SUBMITS)
        pipe.hvals(keys.GAVE_UP)
        pipe.lrange(keys.PROVIDER_CLOCK, 0, -1)
        replies = pipe.execute()
        seconds, micros = replies[0]
        owners_raw = replies[1] if ids else []
        records = [SubmitRecord.from_json(raw) for raw in replies[-3] + replies[-2]]
        clock = [_sample(raw) for raw in replies[-1]]
        return Snapshot(
            now_ms=int(seconds) * 1000 + int(micros) // 1000,
            owners={i: owner for i, owner in zip(ids, owners_raw) if owner},
            records=records,
            clock=clock,
        )

    def clock(self) -> list[tuple[int, int, int]]:
        """The clock samples alone (see ``Snapshot.clock``)."""
        return [_sample(raw) for raw in self._r.lrange(keys.PROVIDER_CLOCK, 0, -1)]

    def adopt(self, job_id: str, index: int, prediction_id: str) -> str:
        """Give the run ``prediction_id`` (see ``submit_adopt.lua``); 'adopted' or why not."""
        return str(self._adopt(
            keys=[keys.job(job_id, "pred"), keys.job(job_id, "submitting_open"), keys.SUBMITS,
                  keys.SUBMITS_BY_START, keys.KNOWN_PREDICTIONS, keys.KNOWN_AT, keys.job(job_id, "results")],
            args=[str(index), member(job_id, index), prediction_id, member(job_id, index)]))

    def give_up(self, record: SubmitRecord) -> bool:
        """The lost answer was not found: its record becomes a tombstone and the run may be
        submitted again."""
        return bool(self._gave_up(
            keys=[keys.SUBMITS, keys.SUBMITS_BY_START, keys.job(record.job_id, "submitting_open"), keys.GAVE_UP,
                  keys.GAVE_UP_BY_END],
            args=[record.member, f"{record.member}#{record.attempt}", str(record.index)]))
