"""Jobs: the live state of every job in Redis.

A job is a hash of counters and facts (``ep:job:<id>``) plus a few hashes keyed by run
index: the planned runs, the prediction id of each submitted run, and the result of each
finished run. Every change that must happen once (a run finishing, a prediction being
charged) is one Lua script call, so concurrent workers and redelivered tasks cannot
count twice. Storage, not Redis, is the lasting record: ``finalize`` writes it out.
"""

from __future__ import annotations

import json
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import redis

from .errors import JobNotFound
from .ledger import from_micros, to_micros
from .plan import Run

PREFIX = "ep"
JOBS_INDEX = f"{PREFIX}:jobs"
DAY_BUDGET_PREFIX = f"{PREFIX}:budget:day:"
ACTIVE = ("queued", "running")
BUDGET_EXHAUSTED = "budget_exhausted"
TO_FINALIZE = f"{PREFIX}:to-finalize"
RUNS_CACHED = 8192  # planned runs a process keeps in memory (about 1 KB each)
MARKED_RUNNING = 1024  # jobs a process remembers having marked running


def _load_script(client: redis.Redis, name: str):
    source = resources.files("pipeline").joinpath("lua", name).read_text()
    return client.register_script(source)


def new_job_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


class StartClaim(NamedTuple):
    """What ``JobStore.claim_start`` found, and whether the claim is this execution's.

    ``state``: ``finished`` (the run has a result), ``submitted`` (it has a prediction, whose
    id is ``prediction_id``), ``taken`` (another execution holds the claim for ``taken_s``
    more seconds) or ``claimed``. Only a claimed run has the rest: ``submit_open`` (an earlier
    submit's answer was lost with its worker), ``attempts`` (submits made so far),
    ``stop_reason`` (the job's, or ''), ``reserved`` (its price is held already) and ``run``.
    """

    state: str
    prediction_id: str | None = None
    taken_s: float = 0.0
    submit_open: bool = False
    attempts: int = 0
    stop_reason: str = ""
    reserved: bool = False
    run: Run | None = None


class RunState(NamedTuple):
    """Whether a run has a result, and its prediction id once submitted."""

    finished: bool
    prediction_id: str | None


class Finished(NamedTuple):
    """What ``JobStore.finish_run`` did."""

    code: int  # -1: the run had already finished (nothing changed); 1: it was the job's last; 0: other
    index_pending: int  # run-index lines of the job waiting to be written to storage

    @property
    def last(self) -> bool:
        return self.code == 1


@dataclass(frozen=True)
class JobStatus:
    """A snapshot of one job, read from Redis."""

    id: str
    name: str
    status: str
    output: str
    total: int
    succeeded: int
    skipped: int
    failed: int
    finished: int
    spent_usd: Decimal
    unconfirmed_usd: Decimal
    estimated_usd: Decimal
    budget_usd: Decimal | None
    created_at: str
    finished_at: str
    error: str
    schedule: str = ""

    @property
    def done(self) -> bool:
        return self.status not in ACTIVE

    @property
    def in_progress(self) -> int:
        return self.total - self.finished

    def to_dict(self) -> dict:
        from .ledger import usd

        return {
            "job_id": self.id,
            "name": self.name,
            "status": self.status,
            "output": self.output,
            "counts": {
                "planned": self.total,
                "succeeded": self.succeeded,
                "skipped": self.skipped,
                "failed": self.failed,
                "unfinished": self.in_progress,
            },
            "spent_usd": usd(self.spent_usd),
            "unconfirmed_usd": usd(self.unconfirmed_usd),
            "estimated_usd": usd(self.estimated_usd),
            "budget_usd": usd(self.budget_usd) if self.budget_usd is not None else None,
            "created_at": self.created_at,
            "finished_at": self.finished_at or None,
            "error": self.error or None,
            "schedule": self.schedule or None,
        }


class JobStore:
    """Job state in Redis, shared by the CLI and every worker."""

    def __init__(self, client: redis.Redis):
        self.r = client
        self._finish = _load_script(client, "finish_run.lua")
        self._reserve = _load_script(client, "budget_reserve.lua")
        self._release = _load_script(client, "budget_release.lua")
        self._unconfirmed = _load_script(client, "charge_unconfirmed.lua")
        self._reopen = _load_script(client, "reopen_run.lua")
        self._index_take = _load_script(client, "index_take.lua")
        self._start_claim = _load_script(client, "start_claim.lua")
        self._collect_claim = _load_script(client, "collect_claim.lua")
        self._mark_running = _load_script(client, "mark_running.lua")
        self._runs: OrderedDict[tuple[str, int], Run] = OrderedDict()
        self._marked_running: set[str] = set()
        self._output_cached = lru_cache(maxsize=256)(lambda job_id: self.field(job_id, "output") or "")

    @classmethod
    def from_url(cls, url: str) -> "JobStore":
        return cls(redis.Redis.from_url(url, decode_responses=True))

    # keys
    @staticmethod
    def key(job_id: str, part: str = "") -> str:
        return f"{PREFIX}:job:{job_id}" + (f":{part}" if part else "")

    # creating
    def create(
        self,
        job_id: str,
        *,
        name: str,
        output: str,
        runs: Iterable[Run],
        total: int,
        estimated_usd: Decimal,
        budget_usd: Decimal | None,
        created_at: str,
        schedule: str = "",
        notify_url: str = "",
        priority: int = 1,
        extra: dict[str, int | str] | None = None,
        batch: int = 2000,
    ) -> None:
        runs_key = self.key(job_id, "runs")
        pipe = self.r.pipeline(transaction=False)
        pending = 0
        for run in runs:
            pipe.hset(runs_key, str(run.index), json.dumps(run.to_dict(), separators=(",", ":")))
            pending += 1
            if pending >= batch:
                pipe.execute()
                pending = 0
        pipe.hset(
            self.key(job_id),
            mapping={
                "id": job_id,
                "name": name,
                "status": "queued",
                "output": output,
                "total": total,
                "succeeded": 0,
                "skipped": 0,
                "failed": 0,
                "finished": 0,
                "spent_micros": 0,
                "estimated_usd": str(estimated_usd),
                "budget_usd": "" if budget_usd is None else str(budget_usd),
                "budget_micros": "" if budget_usd is None else to_micros(budget_usd),
                "held_micros": 0,
                "unconfirmed_micros": 0,
                "schedule": schedule,
                "notify_url": notify_url,
                "priority": priority,
                **(extra or {}),
                "created_at": created_at,
                "finished_at": "",
                "error": "",
            },
        )
        pipe.zadd(JOBS_INDEX, {job_id: datetime.now(timezone.utc).timestamp()})
        pipe.execute()

    # reading
    def status(self, job_id: str) -> JobStatus:
        h = self.r.hgetall(self.key(job_id))
        if not h:
            raise JobNotFound(f"no job {job_id!r} (see `editpipe jobs`)")
        budget = h.get("budget_usd") or ""
        return JobStatus(
            id=h["id"],
            name=h["name"],
            status=h["status"],
            output=h["output"],
            total=int(h["total"]),
            succeeded=int(h["succeeded"]),
            skipped=int(h["skipped"]),
            failed=int(h["failed"]),
            finished=int(h["finished"]),
            spent_usd=from_micros(h["spent_micros"]),
            unconfirmed_usd=from_micros(h.get("unconfirmed_micros", 0)),
            estimated_usd=Decimal(h["estimated_usd"]),
            budget_usd=Decimal(budget) if budget else None,
            created_at=h["created_at"],
            finished_at=h.get("finished_at", ""),
            error=h.get("error", ""),
            schedule=h.get("schedule", ""),
        )

    def recent(self, limit: int = 20) -> list[JobStatus]:
        ids = self.r.zrevrange(JOBS_INDEX, 0, limit - 1)
        out = []
        for job_id in ids:
            try:
                out.append(self.status(job_id))
            except JobNotFound:
                self.r.zrem(JOBS_INDEX, job_id)
        return out

    def field(self, job_id: str, name: str) -> str | None:
        return self.r.hget(self.key(job_id), name)

    def run(self, job_id: str, index: int) -> Run:
        """A planned run. Runs never change once planned, so each process keeps the
        ``RUNS_CACHED`` it read last (a run is read by its start, its checks and its collect)."""
        cached = self._runs.get((job_id, index))
        if cached is not None:
            self._runs.move_to_end((job_id, index))
            return cached
        return self._remember_run(job_id, index, self.r.hget(self.key(job_id, "runs"), str(index)))

    def load_runs(self, wanted: Iterable[tuple[str, int]]) -> None:
        """Read the planned runs of ``wanted`` (job id, index) that this process does not
        hold yet, in one round trip (a poller's batch, say)."""
        missing = list(dict.fromkeys(key for key in wanted if key not in self._runs))
        if not missing:
            return
        pipe = self.r.pipeline(transaction=False)
        for job_id, index in missing:
            pipe.hget(self.key(job_id, "runs"), str(index))
        for (job_id, index), raw in zip(missing, pipe.execute()):
            self._remember_run(job_id, index, raw)

    def _remember_run(self, job_id: str, index: int, raw: str | None) -> Run:
        if not raw:
            raise JobNotFound(f"job {job_id!r} has no run {index}")
        run = self._runs[(job_id, index)] = Run.from_dict(json.loads(raw))
        if len(self._runs) > RUNS_CACHED:
            self._runs.popitem(last=False)
        return run

    def output_root(self, job_id: str) -> str:
        """Where the job's outputs go (set when the job is created, never changed)."""
        return self._output_cached(job_id)

    def runs(self, job_id: str) -> Iterator[Run]:
        for _, raw in self.r.hscan_iter(self.key(job_id, "runs"), count=1000):
            yield Run.from_dict(json.loads(raw))

    def results(self, job_id: str) -> list[dict]:
        lines = [json.loads(v) for _, v in self.r.hscan_iter(self.key(job_id, "results"), count=1000)]
        return sorted(lines, key=lambda line: line["index"])

    def ledger(self, job_id: str) -> list[dict]:
        lines = [json.loads(v) for _, v in self.r.hscan_iter(self.key(job_id, "ledger"), count=1000)]
        return sorted(lines, key=lambda line: (line["charged_at"], line["prediction_id"] or ""))

    def unfinished(self, job_id: str, indices: Iterable[int]) -> list[int]:
        """Those of ``indices`` that have no result yet (one round trip)."""
        wanted = list(indices)
        if not wanted:
            return []
        found = self.r.hmget(self.key(job_id, "results"), [str(i) for i in wanted])
        return [i for i, result in zip(wanted, found) if result is None]

    # run state
    def run_states(self, wanted: list[tuple[str, int]]) -> list[RunState]:
        """The state of each (job id, index) of ``wanted``, in one round trip."""
        pipe = self.r.pipeline(transaction=False)
        for job_id, index in wanted:
            pipe.hexists(self.key(job_id, "results"), str(index))
            pipe.hget(self.key(job_id, "pred"), str(index))
        replies = pipe.execute()
        return [RunState(bool(finished), prediction_id)
                for finished, prediction_id in zip(replies[::2], replies[1::2])]

    def prediction_of(self, job_id: str, index: int) -> str | None:
        return self.r.hget(self.key(job_id, "pred"), str(index))

    def record_prediction(self, job_id: str, index: int, prediction_id: str) -> None:
        """Stored the moment the submit answers: a redelivered task polls this one instead
        of submitting again."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key(job_id, "pred"), str(index), prediction_id)
        pipe.hdel(self.key(job_id, "submitting_open"), str(index))
        pipe.execute()

    def claim_start(self, job_id: str, index: int, token: str, ttl_s: int) -> StartClaim:
        """Claim a run for a submit unless it is finished or submitted already, and read what
        the submit must know, in one atomic step (``start_claim.lua``).

        Only one execution of a run may be submitting it at a time. ``token`` is unique per
        execution, so a task delivered twice cannot hold the claim twice.
        """
        with_run = (job_id, index) not in self._runs
        reply = self._start_claim(
            keys=[self.key(job_id, "results"), self.key(job_id, "pred"), self.key(job_id, f"claim:{index}"),
                  self.key(job_id, "submitting_open"), self.key(job_id, "submitting"), self.key(job_id),
                  self.key(job_id, "reserved"), self.key(job_id, "runs")],
            args=[index, token, ttl_s, "1" if with_run else "0"],
        )
        state = reply[0]
        if state == "submitted":
            return StartClaim(state, prediction_id=reply[1])
        if state == "taken":
            return StartClaim(state, taken_s=max(0.0, int(reply[1]) / 1000))
        if state != "claimed":
            return StartClaim(state)
        _, submit_open, attempts, stop_reason, reserved, raw_run = reply
        return StartClaim(
            state,
            submit_open=bool(submit_open),
            attempts=int(attempts),
            stop_reason=stop_reason,
            reserved=bool(reserved),
            run=self._remember_run(job_id, index, raw_run) if with_run else self.run(job_id, index),
        )

    def claim_collect(self, job_id: str, index: int, ttl_s: int) -> Run | None:
        """Claim the collection of a run's output (``collect_claim.lua``); the planned run,
        or None when the run has finished or another collector holds the claim."""
        with_run = (job_id, index) not in self._runs
        reply = self._collect_claim(
            keys=[self.key(job_id, "results"), self.key(job_id, f"collecting:{index}"), self.key(job_id, "runs")],
            args=[index, ttl_s, "1" if with_run else "0"],
        )
        if reply[0] != "claimed":
            return None
        return self._remember_run(job_id, index, reply[1]) if with_run else self.run(job_id, index)

    def release_collect(self, job_id: str, index: int) -> None:
        self.r.delete(self.key(job_id, f"collecting:{index}"))

    def release_claim(self, job_id: str, index: int) -> None:
        self.r.delete(self.key(job_id, f"claim:{index}"))

    def mark_running(self, job_id: str) -> None:
        """Note that the job's first submit is on its way (``mark_running.lua``). A job never
        goes back to queued, so each process does this once per job."""
        if job_id in self._marked_running:
            return
        self._mark_running(keys=[self.key(job_id)], args=[datetime.now(timezone.utc).isoformat()])
        if len(self._marked_running) >= MARKED_RUNNING:
            self._marked_running.clear()
        self._marked_running.add(job_id)

    def stop(self, job_id: str, reason: str) -> None:
        """Stop submitting for this job (a 401, say); runs in flight still finish."""
        self.r.hsetnx(self.key(job_id), "stop_reason", reason)

    def stop_reason(self, job_id: str) -> str | None:
        return self.r.hget(self.key(job_id), "stop_reason")

    def cancel(self, job_id: str) -> JobStatus:
        status = self.status(job_id)
        if not status.done:
            self.stop(job_id, "cancelled")
            self.r.hset(self.key(job_id), "cancel_requested", "1")
        return self.status(job_id)

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
        """Record a run's end once, with its ledger line and its run-index line if given."""
        code, pending = self._finish(
            keys=[self.key(job_id), self.key(job_id, "results"), self.key(job_id, "ledger"),
                  self.key(job_id, "reserved"), TO_FINALIZE, self.key(job_id, "index-pending")],
            args=[
                index,
                outcome,
                json.dumps(result, separators=(",", ":")),
                ledger_line["prediction_id"] if ledger_line else "",
                json.dumps(ledger_line, separators=(",", ":")) if ledger_line else "",
                cost_micros,
                index_line,
            ],
        )
        return Finished(int(code), int(pending))

    def take_index_batch(self, job_id: str, at_least: int) -> tuple[int, str] | None:
        """The job's pending run-index lines as ``(batch number, text)``, moved aside until
        ``index_batch_written``; None when fewer than ``at_least`` are pending."""
        taken = self._index_take(
            keys=[self.key(job_id, "index-pending"), self.key(job_id), self.key(job_id, "index-batches")],
            args=[at_least],
        )
        return (int(taken[0]), taken[1]) if taken else None

    def index_batch_written(self, job_id: str, batch: int) -> None:
        self.r.hdel(self.key(job_id, "index-batches"), batch)

    def forget_index_batches(self, job_id: str) -> None:
        """Finalize wrote the job's whole index: nothing pending is needed any more."""
        self.r.delete(self.key(job_id, "index-pending"), self.key(job_id, "index-batches"))

    def unwritten_index(self, output_root: str) -> Iterator[str]:
        """Run-index text of every job under ``output_root`` not yet in storage: pending lines,
        and batches taken but not yet written (several lines each; ``run_index``). Only a job
        still running (or finalizing) has any; finalize drops them once its whole index is
        written."""
        ids = self.r.zrange(JOBS_INDEX, 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self.key(job_id), "output")
        same_root = [job_id for job_id, output in zip(ids, pipe.execute()) if output == output_root]
        for job_id in same_root:
            pipe.lrange(self.key(job_id, "index-pending"), 0, -1)
            pipe.hvals(self.key(job_id, "index-batches"))
        for texts in pipe.execute():
            yield from texts

    # money
    def reserve(self, job_id: str, index: int, price: Decimal, *, day: str, day_cap: Decimal | None) -> int:
        """Hold a run's price against the job's and the day's budget before it is submitted.
        Returns 1 when held, -1 when the job's budget is used up, -2 when the day's is."""
        return int(
            self._reserve(
                keys=[self.key(job_id), self.key(job_id, "reserved"), DAY_BUDGET_PREFIX + day],
                args=[index, to_micros(price), "" if day_cap is None else to_micros(day_cap), day],
            )
        )

    def release(self, job_id: str, index: int) -> None:
        """Give a run's reservation back: its call was not billed. Safe to repeat."""
        self._release(keys=[self.key(job_id), self.key(job_id, "reserved")], args=[index, DAY_BUDGET_PREFIX])

    def day_held(self, day: str) -> Decimal:
        return from_micros(self.r.get(DAY_BUDGET_PREFIX + day) or 0)

    def charge_unconfirmed(self, job_id: str, index: int, entry_id: str, line: dict, cost_micros: int) -> bool:
        """Charge a submit whose answer was lost, once per ``entry_id``."""
        return bool(
            self._unconfirmed(
                keys=[self.key(job_id), self.key(job_id, "ledger"), self.key(job_id, "reserved")],
                args=[index, entry_id, json.dumps(line, separators=(",", ":")), cost_micros],
            )
        )

    def begin_submit(self, job_id: str, index: int) -> int:
        """Mark a submit as on the wire, just before it is sent; returns its attempt number.
        A later delivery that finds the mark without a prediction id knows the answer was
        lost with its worker."""
        pipe = self.r.pipeline(transaction=True)
        pipe.hincrby(self.key(job_id, "submitting"), str(index), 1)
        pipe.hset(self.key(job_id, "submitting_open"), str(index), 1)
        return int(pipe.execute()[0])

    def end_submit(self, job_id: str, index: int) -> None:
        """The submit is settled (answered, or known not sent): forget the on-the-wire mark."""
        self.r.hdel(self.key(job_id, "submitting_open"), str(index))

    def count_lost(self, job_id: str, index: int) -> int:
        """Count one more lost submit answer for a run; returns how many it has had."""
        return int(self.r.hincrby(self.key(job_id, "lost"), str(index), 1))

    def flag(self, job_id: str, name: str) -> None:
        self.r.hset(self.key(job_id), name, "1")

    def reopen(self, job_id: str, index: int, counter: str = "failed") -> bool:
        """Take a finished run back so it can run again (``resume``)."""
        return bool(
            self._reopen(
                keys=[self.key(job_id), self.key(job_id, "results"), self.key(job_id, "submitting")],
                args=[index, counter],
            )
        )

    def reopen_job(self, job_id: str, budget_usd: Decimal | None = None) -> None:
        """Make a finished job runnable again (``resume``): lift its stop, optionally with a
        new budget (a cap on the job's whole spend, what it spent before included)."""
        key = self.key(job_id)
        self.r.hdel(key, "stop_reason", "cancel_requested", BUDGET_EXHAUSTED)
        fields: dict[str, str | int] = {"status": "running", "finished_at": "", "error": ""}
        if budget_usd is not None:
            fields.update(budget_usd=str(budget_usd), budget_micros=to_micros(budget_usd))
        self.r.hset(key, mapping=fields)

    def forget_attempts(self, job_id: str, index: int) -> None:
        """Clear a run's claim and lost-answer count so a resumed run starts afresh."""
        self.r.delete(self.key(job_id, f"claim:{index}"))
        self.r.hdel(self.key(job_id, "lost"), str(index))

    def finalized(self, job_id: str) -> None:
        """The job's records are written: take it off the to-finalize list."""
        self.r.zrem(TO_FINALIZE, job_id)

    def stale_finalizations(self, older_than_s: float) -> list[str]:
        """Jobs whose last run finished over ``older_than_s`` ago and are still not finalized
        (their finalize task was lost)."""
        now = float(self.r.time()[0])
        return list(self.r.zrangebyscore(TO_FINALIZE, "-inf", now - older_than_s))

    def set_final(self, job_id: str, status: str, finished_at: str) -> None:
        self.r.hset(self.key(job_id), mapping={"status": status, "finished_at": finished_at})

    def set_error(self, job_id: str, message: str) -> None:
        self.r.hset(self.key(job_id), "error", message)
