"""Runs: the planned runs of each job and everything that happens to one run in Redis.

A job's planned runs are its blueprint (``plan``: a head and chunks of image sets, written
by ``Jobs.create``), from which each process builds a run on demand, keeping the heads and
set chunks it read last; ``runs`` holds a JSON per run for the runs outside a blueprint (a
job recorded from a plain list, runs added beyond the planned ones): an index the blueprint
does not cover is read there.

Per job, hashes keyed by run index: ``runs`` (see above), ``pred`` (prediction id),
``results`` (result line), ``submitting``/``submitting_open``/``lost`` (submit marks),
``failed`` (failed predictions given up for a new submit), ``reserved`` (see ``budget``),
and ``ledger`` (entry id -> ledger line); per run, a start
claim and a collect claim that expire by themselves.

Guaranteed: a run is finished once (``finish_run``: a second call changes nothing), its
ledger line is charged once per entry id, and a start or a collect is claimed by one
execution at a time, each claim and its checks one atomic script call. A job whose record
Redis no longer has (its state was lost) is never started or finished: those steps raise
``JobLost`` and write nothing.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import NamedTuple

from ..blueprint import SETS_PER_CHUNK, Blueprint, SetPart, set_chunk
from ..errors import JobLost, JobNotFound
from ..plan import Run
from . import keys
from .connection import Connection
from .metrics import utc_day

RUNS_CACHED = 8192  # planned runs a process keeps in memory (about 1 KB each)
PLANS_CACHED = 64  # jobs' blueprint heads a process keeps
CHUNKS_CACHED = 256  # blueprint set chunks a process keeps (64 image sets, ~20 KB each)


class StartClaim(NamedTuple):
    """What ``Runs.claim_start`` found, and whether the claim is this execution's.

    ``state``: ``finished`` (the run has a result), ``submitted`` (it has a prediction, whose
    id is ``prediction_id``), ``taken`` (another execution holds the claim for ``taken_s``
    more seconds) or ``claimed``. Only a claimed run has the rest: ``submit_open`` (an earlier
    submit's answer was lost with its worker), ``attempts`` (submits made so far),
    ``stop_reason`` (the job's, or ''), ``reserved`` (its price is held already), ``run``
    and ``paused`` (the job is paused: ``Jobs.pause``).
    """

    state: str
    prediction_id: str | None = None
    taken_s: float = 0.0
    submit_open: bool = False
    attempts: int = 0
    stop_reason: str = ""
    reserved: bool = False
    run: Run | None = None
    paused: bool = False


class RunState(NamedTuple):
    """Whether a run has a result, and its prediction id once submitted."""

    finished: bool
    prediction_id: str | None


class Finished(NamedTuple):
    """What ``Runs.finish_run`` did."""

    code: int  # -1: the run had already finished (nothing changed); 1: it was the job's last; 0: other
    index_pending: int  # run-index lines of the job waiting to be written to storage
    index_waited_s: float = 0.0  # how long the oldest of them has waited

    @property
    def last(self) -> bool:
        return self.code == 1


def _json(value: dict) -> str:
    return json.dumps(value, separators=(",", ":"))


class Runs:
    """The runs of every job: planned runs (cached), claims, submit marks, prediction ids,
    results and ledger lines."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._finish = conn.script("finish_run.lua", "budget_lib.lua", "alerts_lib.lua")
        self._reopen = conn.script("reopen_run.lua")
        self._start_claim = conn.script("start_claim.lua")
        self._release_claim = conn.script("release_claim.lua")
        self._collect_claim = conn.script("collect_claim.lua")
        self._begin_submit = conn.script("begin_submit.lua")
        self._drop_failed = conn.script("drop_failed_prediction.lua")
        self._cache: OrderedDict[tuple[str, int], Run] = OrderedDict()
        self._plans: OrderedDict[str, Blueprint | None] = OrderedDict()
        self._chunks: OrderedDict[tuple[str, int], list[SetPart]] = OrderedDict()

    # planned runs
    def run(self, job_id: str, index: int) -> Run:
        """A planned run. Runs never change once planned, so each process keeps the
        ``RUNS_CACHED`` it read last (a run is read by its start, its checks and its collect)."""
        cached = self._cache.get((job_id, index))
        if cached is not None:
            self._cache.move_to_end((job_id, index))
            return cached
        return self._remember(job_id, index, self._r.hget(keys.job(job_id, "runs"), str(index)))

    def load(self, wanted: Iterable[tuple[str, int]]) -> None:
        """Read what the planned runs of ``wanted`` (job id, index) that this process does
        not hold yet are built from, in a round trip or two (a poller's batch, say). One that
        Redis does not have is left out (``run`` says why: its job was lost, say)."""
        missing = list(dict.fromkeys(key for key in wanted if key not in self._cache))
        if not missing:
            return
        self._load_plans({job_id for job_id, _ in missing})
        chunks = {(job_id, index) for job_id, index in missing if self._covers(job_id, index)}
        wanted_chunks = list(dict.fromkeys(
            (job_id, self._plans[job_id].locate(index)[0] // SETS_PER_CHUNK)  # type: ignore[union-attr]
            for job_id, index in chunks))
        pipe = self._r.pipeline(transaction=False)
        needed = [c for c in wanted_chunks if c not in self._chunks]
        for job_id, chunk in needed:
            pipe.hget(keys.job(job_id, "plan"), f"sets:{chunk}")
        listed = [key for key in missing if key not in chunks]
        for job_id, index in listed:
            pipe.hget(keys.job(job_id, "runs"), str(index))
        replies = pipe.execute()
        for key, raw in zip(needed, replies):
            if raw:
                self._keep_chunk(key, set_chunk(raw))
        for (job_id, index), raw in zip(listed, replies[len(needed):]):
            if raw:
                self._remember(job_id, index, raw)
        for job_id, index in chunks:
            if (job_id, self._plans[job_id].locate(index)[0] // SETS_PER_CHUNK) in self._chunks:  # type: ignore[union-attr]
                self._remember(job_id, index, None)

    def _remember(self, job_id: str, index: int, raw: str | None) -> Run:
        """The run from its JSON (``raw``, from ``runs``), else built from the job's blueprint."""
        if raw:
            run = Run.from_dict(json.loads(raw))
        else:
            self._load_plans({job_id})
            if not self._covers(job_id, index):
                if not self._r.hexists(keys.job(job_id), "total"):
                    raise JobLost(job_id)
                raise JobNotFound(f"job {job_id!r} has no run {index}")
            run = self._plans[job_id].run(index)  # type: ignore[union-attr]
        self._cache[(job_id, index)] = run
        if len(self._cache) > RUNS_CACHED:
            self._cache.popitem(last=False)
        return run

    def _covers(self, job_id: str, index: int) -> bool:
        blueprint = self._plans.get(job_id)
        return blueprint is not None and 0 <= index < len(blueprint)

    def _load_plans(self, job_ids: set[str]) -> None:
        """Read the blueprint heads of ``job_ids`` this process does not hold (one round trip).
        A job without one (its runs listed one by one, or lost) is asked again next time."""
        unknown = [job_id for job_id in job_ids if self._plans.get(job_id) is None]
        if not unknown:
            for job_id in job_ids:
                self._plans.move_to_end(job_id)
            return
        pipe = self._r.pipeline(transaction=False)
        for job_id in unknown:
            pipe.hget(keys.job(job_id, "plan"), "head")
        for job_id, head in zip(unknown, pipe.execute()):
            if head:
                self._plans[job_id] = Blueprint.from_head(head, lambda pos, job_id=job_id: self._set(job_id, pos))
        while len(self._plans) > PLANS_CACHED:
            self._plans.popitem(last=False)

    def _set(self, job_id: str, pos: int) -> SetPart:
        """Image set ``pos`` of the job's blueprint, from the chunk holding it (read once)."""
        key = (job_id, pos // SETS_PER_CHUNK)
        chunk = self._chunks.get(key)
        if chunk is None:
            raw = self._r.hget(keys.job(job_id, "plan"), f"sets:{key[1]}")
            if not raw:
                raise JobLost(job_id)  # the head was read, so the job's parts were lost since
            chunk = self._keep_chunk(key, set_chunk(raw))
        else:
            self._chunks.move_to_end(key)
        return chunk[pos % SETS_PER_CHUNK]

    def _keep_chunk(self, key: tuple[str, int], chunk: list[SetPart]) -> list[SetPart]:
        self._chunks[key] = chunk
        if len(self._chunks) > CHUNKS_CACHED:
            self._chunks.popitem(last=False)
        return chunk

    def planned(self, job_id: str) -> Iterator[Run]:
        """Every planned run of the job: its blueprint's in order, then those listed one by one."""
        self._load_plans({job_id})
        blueprint = self._plans.get(job_id)
        if blueprint is not None:
            yield from blueprint
        for _, raw in self._r.hscan_iter(keys.job(job_id, "runs"), count=1000):
            yield Run.from_dict(json.loads(raw))

    def planned_count(self, job_id: str) -> int:
        self._load_plans({job_id})
        blueprint = self._plans.get(job_id)
        return (len(blueprint) if blueprint is not None else 0) + int(self._r.hlen(keys.job(job_id, "runs")))

    # results and ledger
    def iter_results(self, job_id: str, batch: int = 1000) -> Iterator[dict]:
        """The job's result lines in index order, read ``batch`` indices a round trip: a
        million-run job's results are never all in memory at once."""
        key = keys.job(job_id, "results")
        count = int(self._r.hlen(key))
        found = start = 0
        # Results are keyed by run index: every one is below the planned runs plus the results.
        top = self.planned_count(job_id) + count
        while found < count and start < top:
            for raw in self._r.hmget(key, [str(i) for i in range(start, start + batch)]):
                if raw is not None:
                    found += 1
                    yield json.loads(raw)
            start += batch

    def results(self, job_id: str) -> list[dict]:
        lines = [json.loads(v) for _, v in self._r.hscan_iter(keys.job(job_id, "results"), count=1000)]
        return sorted(lines, key=lambda line: line["index"])

    def ledger(self, job_id: str) -> list[dict]:
        lines = [json.loads(v) for _, v in self._r.hscan_iter(keys.job(job_id, "ledger"), count=1000)]
        return sorted(lines, key=lambda line: (line["charged_at"], line["prediction_id"] or ""))

    def unfinished(self, job_id: str, indices: Iterable[int]) -> list[int]:
        """Those of ``indices`` that have no result yet (one round trip)."""
        wanted = list(indices)
        if not wanted:
            return []
        found = self._r.hmget(keys.job(job_id, "results"), [str(i) for i in wanted])
        return [i for i, result in zip(wanted, found) if result is None]

    def states(self, wanted: list[tuple[str, int]]) -> list[RunState]:
        """The state of each (job id, index) of ``wanted``, in one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for job_id, index in wanted:
            pipe.hexists(keys.job(job_id, "results"), str(index))
            pipe.hget(keys.job(job_id, "pred"), str(index))
        replies = pipe.execute()
        return [RunState(bool(finished), prediction_id)
                for finished, prediction_id in zip(replies[::2], replies[1::2])]

    # starting
    def claim_start(self, job_id: str, index: int, token: str, ttl_s: int) -> StartClaim:
        """Claim a run for a submit unless it is finished or submitted already, and read what
        the submit must know, in one atomic step (``start_claim.lua``).

        Only one execution of a run may be submitting it at a time. ``token`` is unique per
        execution, so a task delivered twice cannot hold the claim twice.
        """
        with_run = (job_id, index) not in self._cache
        reply = self._start_claim(
            keys=[keys.job(job_id, "results"), keys.job(job_id, "pred"), keys.run_claim(job_id, index),
                  keys.job(job_id, "submitting_open"), keys.job(job_id, "submitting"), keys.job(job_id),
                  keys.job(job_id, "reserved"), keys.job(job_id, "runs"), keys.job(job_id, "paused")],
            args=[index, token, ttl_s, "1" if with_run else "0"],
        )
        state = reply[0]
        if state == "lost":
            raise JobLost(job_id)
        if state == "submitted":
            return StartClaim(state, prediction_id=reply[1])
        if state == "taken":
            return StartClaim(state, taken_s=max(0.0, int(reply[1]) / 1000))
        if state != "claimed":
            return StartClaim(state)
        _, submit_open, attempts, stop_reason, reserved, raw_run, paused = reply
        return StartClaim(
            state,
            submit_open=bool(submit_open),
            attempts=int(attempts),
            stop_reason=stop_reason,
            reserved=bool(reserved),
            run=self._remember(job_id, index, raw_run) if with_run else self.run(job_id, index),
            paused=bool(paused),
        )

    def release_claim(self, job_id: str, index: int, token: str) -> None:
        """Give the start claim back, if ``token`` still holds it (``release_claim.lua``)."""
        self._release_claim(keys=[keys.run_claim(job_id, index)], args=[token])

    def begin_submit(self, job_id: str, index: int, token: str) -> int:
        """Mark a submit as on the wire, just before it is sent; returns its attempt number,
        or 0 when the start claim ``token`` took has lapsed and may be another's (a Redis
        outage longer than the claim): then the caller must not submit. A later delivery
        that finds the mark without a prediction id knows the answer was lost with its worker."""
        return int(self._begin_submit(
            keys=[keys.run_claim(job_id, index), keys.job(job_id, "submitting"),
                  keys.job(job_id, "submitting_open"), keys.job(job_id, "pred")],
            args=[str(index), token]))

    def end_submit(self, job_id: str, index: int) -> None:
        """The submit is settled (answered, or known not sent): forget the on-the-wire mark."""
        self._r.hdel(keys.job(job_id, "submitting_open"), str(index))

    def count_lost(self, job_id: str, index: int) -> int:
        """Count one more lost submit answer for a run; returns how many it has had."""
        return int(self._r.hincrby(keys.job(job_id, "lost"), str(index), 1))

    def record_prediction(self, job_id: str, index: int, prediction_id: str) -> None:
        """Stored the moment the submit answers: a redelivered task polls this one instead
        of submitting again."""
        pipe = self._r.pipeline(transaction=True)
        pipe.hset(keys.job(job_id, "pred"), str(index), prediction_id)
        pipe.hdel(keys.job(job_id, "submitting_open"), str(index))
        pipe.execute()

    def drop_failed_prediction(self, job_id: str, index: int, prediction_id: str, most: int) -> int:
        """Count a run's prediction ``prediction_id`` as failed and, while the run has had no
        more than ``most`` such, forget it as the run's prediction (and the finished start's
        claim), so that its next start submits it again (``drop_failed_prediction.lua``). Returns the failed predictions
        counted for the run, or 0 when nothing changed: the run has finished, or its
        prediction is no longer this one (another check of it got here first)."""
        return int(self._drop_failed(
            keys=[keys.job(job_id), keys.job(job_id, "results"), keys.job(job_id, "pred"),
                  keys.job(job_id, "failed"), keys.run_claim(job_id, index)],
            args=[str(index), prediction_id, most]))

    def prediction_of(self, job_id: str, index: int) -> str | None:
        return self._r.hget(keys.job(job_id, "pred"), str(index))

    # collecting and finishing
    def claim_collect(self, job_id: str, index: int, ttl_s: int) -> Run | None:
        """Claim the collection of a run's output (``collect_claim.lua``); the planned run,
        or None when the run has finished or another collector holds the claim."""
        with_run = (job_id, index) not in self._cache
        reply = self._collect_claim(
            keys=[keys.job(job_id, "results"), keys.collect_claim(job_id, index), keys.job(job_id, "runs")],
            args=[index, ttl_s, "1" if with_run else "0"],
        )
        if reply[0] != "claimed":
            return None
        if not with_run:
            return self.run(job_id, index)
        try:
            return self._remember(job_id, index, reply[1])
        except JobNotFound:  # its job was lost: the claim must not outlive the answer
            self.release_collect(job_id, index)
            raise

    def release_collect(self, job_id: str, index: int) -> None:
        self._r.delete(keys.collect_claim(job_id, index))

    def finish_run(
        self,
        job_id: str,
        index: int,
        *,
        outcome: str,
        result: dict,
        ledger_line: dict | None = None,
        cost_micros: int = 0,
        index_line: str = "",
    ) -> Finished:
        """Record a run's end once, with its ledger line and its run-index line if given; the
        last run's end puts its job on the to-finalize list in the same step, the fleet's
        counters (``metrics``) count its outcome, a failure's ``error_kind`` and its cost, and a
        charge claims the budget alerts it crosses (``Alerts``) in that step too. Raises
        ``JobLost`` (having written nothing) when Redis no longer has the job."""
        code, pending, waited_ms = self._finish_call(job_id, index, outcome, result, ledger_line, cost_micros,
                                                     index_line)
        if int(code) == -2:
            raise JobLost(job_id)
        return Finished(int(code), int(pending), int(waited_ms) / 1000)

    def _finish_call(self, job_id: str, index: int, outcome: str, result: dict, ledger_line: dict | None,
                     cost_micros: int, index_line: str, client=None):
        """One ``finish_run.lua`` call (on ``client``, a pipeline, when given)."""
        return self._finish(
            keys=[keys.job(job_id), keys.job(job_id, "results"), keys.job(job_id, "ledger"),
                  keys.job(job_id, "reserved"), keys.TO_FINALIZE, keys.job(job_id, "index-pending"), keys.METRICS,
                  keys.job(job_id, "alerts"), keys.ALERTS, keys.ALERTS_DUE],
            args=[
                index,
                outcome,
                _json(result),
                ledger_line["prediction_id"] if ledger_line else "",
                _json(ledger_line) if ledger_line else "",
                cost_micros,
                index_line,
                utc_day(),
                str(result.get("error_kind") or "") if outcome == "failed" else "",
                keys.DAY_BUDGET_PREFIX,
                keys.DAY_SPEND_SUFFIX,
            ],
            client=client,
        )

    def finish_many(self, job_id: str, outcome: str, results: Iterable[tuple[int, dict]], batch: int = 1000) -> bool:
        """``finish_run`` for many runs without a ledger line (runs skipped as done already),
        ``batch`` script calls a round trip; True when one of them was the job's last. Each
        run finishes once, as with ``finish_run``."""
        last = False
        it = iter(results)
        while chunk := list(itertools.islice(it, batch)):
            pipe = self._r.pipeline(transaction=False)
            for index, result in chunk:
                self._finish_call(job_id, index, outcome, result, None, 0, "", client=pipe)
            for code, _, _ in pipe.execute():
                if int(code) == -2:
                    raise JobLost(job_id)
                last = last or int(code) == 1
        return last

    # resuming
    def reopen(self, job_id: str, index: int, counter: str = "failed") -> bool:
        """Take a finished run back so it can run again (``resume``)."""
        return bool(
            self._reopen(
                keys=[keys.job(job_id), keys.job(job_id, "results"), keys.job(job_id, "submitting")],
                args=[index, counter],
            )
        )

    def forget_attempts(self, job_id: str, index: int) -> None:
        """Clear a run's claim and its counts of lost answers and failed predictions, so a
        resumed run starts afresh."""
        self._r.delete(keys.run_claim(job_id, index))
        self._r.hdel(keys.job(job_id, "lost"), str(index))
        self._r.hdel(keys.job(job_id, "failed"), str(index))
