"""Job records: one hash per job (``ep:job:<id>``) of counters and facts, and the jobs index.

A job's planned runs are stored as its plan's blueprint (``ep:job:<id>:plan``: the parts its
runs share, ``pipeline.blueprint``), written once: a million-run catalog job costs Redis its
image sets and prompts (about 35 bytes a run), not a JSON per run. Runs given as a plain
list (not a plan's ``PlannedRuns``), and runs added later beyond the planned ones, are kept
one JSON each in ``ep:job:<id>:runs`` (``state.Runs`` reads either).

Guaranteed: a job's counters change only inside the scripts of ``runs`` and ``budget`` (so
concurrent workers and redelivered tasks never count twice); a job never goes back to
queued once running; a stop reason, once set, is kept (the first one wins) until ``reopen``;
a job whose last run has finished is on the to-finalize list until ``finalized``; a pause
(``ep:job:<id>:paused``) holds no run back longer than its holder keeps renewing it.

Loss: Redis keeps an epoch (``ep:epoch``, when its records begin), written with its first
job. A job asked about that has no record is ``JobLost`` when its id's time is before the
epoch (or Redis has none: it holds nothing), i.e. Redis lost its data after the job was
submitted; otherwise plainly ``JobNotFound``. Storage is the surer witness (a job that
storage marks open and Redis lacks is lost: ``pipeline.recovery``); this answers without it.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from functools import lru_cache
from typing import NamedTuple

from ..errors import JobLost, JobNotFound
from ..ledger import from_micros, to_micros, usd
from ..blueprint import PlannedRuns
from ..plan import Run
from . import keys
from .connection import Connection

ACTIVE = ("queued", "running")
FINISHED_TTL_S = 7 * 24 * 3600  # a finalized job's keys expire after this (settings.finished_job_ttl_s)
BUDGET_EXHAUSTED = "budget_exhausted"
MARKED_RUNNING = 1024  # jobs a process remembers having marked running
STAMP = "%Y%m%dT%H%M%SZ"
_STAMPED = re.compile(r"-(\d{8}T\d{6}Z)-[0-9a-f]{6}$")
# A job id's time comes from the submitter's clock, the epoch from Redis's: a job whose id
# says it was submitted at most this long before the epoch is not called lost on that alone.
CLOCK_SLACK_S = 2


def new_job_id(name: str) -> str:
    stamp = datetime.now(timezone.utc).strftime(STAMP)
    return f"{name}-{stamp}-{secrets.token_hex(3)}"


def job_id_time(job_id: str) -> datetime | None:
    """When a job was submitted, from its id (``new_job_id``); None for an id not made so."""
    found = _STAMPED.search(job_id)
    return datetime.strptime(found.group(1), STAMP).replace(tzinfo=timezone.utc) if found else None


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


class AddedRun(NamedTuple):
    """What ``Jobs.add_runs`` did with one run: ``added`` (``index`` is the new run's),
    ``already`` (its source was regenerated before, as run ``index``) or ``taken`` (its run
    key is the added run ``index``'s)."""

    status: str
    index: int


class Jobs:
    """Job records: create, read, stop, cancel, and the job's final status."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._mark_running = conn.script("mark_running.lua")
        self._epoch = conn.script("epoch.lua")
        self._add_runs = conn.script("add_runs.lua")
        self._marked_running: set[str] = set()
        self._output_cached = lru_cache(maxsize=256)(self._output_of)

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
        """Record a job and its planned runs (written ``batch`` fields at a time), queued: a
        plan's ``PlannedRuns`` as its blueprint, any other runs one JSON each."""
        pipe = self._r.pipeline(transaction=False)
        pending = 0
        for key, field, value in _run_fields(job_id, runs):
            pipe.hset(key, field, value)
            pending += 1
            if pending >= batch:
                pipe.execute()
                pending = 0
        pipe.hset(
            keys.job(job_id),
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
        pipe.zadd(keys.JOBS, {job_id: datetime.now(timezone.utc).timestamp()})
        self._epoch(keys=[keys.EPOCH], client=pipe)
        pipe.execute()

    def add_runs(self, job_id: str, runs: Iterable[tuple[int, Run]]) -> list[AddedRun]:
        """Add runs to a recorded job, each regenerating the run at its source index
        (``add_runs.lua``): each becomes the job's next run index, and a finished job is
        reopened, in one step. Guaranteed: a source regenerated once is never regenerated
        again (``already``: the index of the run added for it), and no two added runs share
        a run key (``taken``: the caller picks another variant); ``JobLost`` when Redis has
        no record of the job. The runs' own ``index`` is ignored."""
        args: list[str | int] = []
        for source, run in runs:
            args += [source, json.dumps(run.to_dict(), separators=(",", ":"))]
        if not args:
            return []
        reply = self._add_runs(
            keys=[keys.job(job_id), keys.job(job_id, "runs"), keys.job(job_id, "regenerated"),
                  keys.job(job_id, "added-keys"), keys.TO_FINALIZE],
            args=args,
        )
        if reply == -2:
            raise JobLost(job_id)
        return [AddedRun(status, int(index)) for status, index in reply]

    def regenerated(self, job_id: str) -> dict[int, int]:
        """Each regenerated run's index -> the index of the run added for it (``add_runs``)."""
        return {int(k): int(v) for k, v in self._r.hgetall(keys.job(job_id, "regenerated")).items()}

    def _keys_of(self, job_id: str) -> list[str]:
        """The job's record and every part of it Redis holds now."""
        pattern = keys.job(re.sub(r"([*?\[\]\\])", r"\\\1", job_id), "*")
        return [keys.job(job_id), *self._r.scan_iter(match=pattern, count=1000)]

    def memory(self, job_id: str) -> int:
        """The bytes Redis holds for the job: ``MEMORY USAGE`` of each of its keys."""
        pipe = self._r.pipeline(transaction=False)
        for key in self._keys_of(job_id):
            pipe.memory_usage(key, samples=0)
        return sum(int(n or 0) for n in pipe.execute())

    def expire(self, job_id: str, ttl_s: int) -> None:
        """Let everything Redis holds for a finalized job go in ``ttl_s`` seconds: its
        records (results, ledger, report, run index) are in storage, where ``status
        --output``, ``resume --output`` and the next plans read them. A job asked about
        after that is one Redis does not know (``missing``)."""
        pipe = self._r.pipeline(transaction=False)
        for key in self._keys_of(job_id):
            pipe.expire(key, ttl_s)
        pipe.execute()

    def ttl(self, job_id: str) -> int | None:
        """Seconds until the job's record expires; None when it does not (or is gone)."""
        left = int(self._r.ttl(keys.job(job_id)))
        return left if left >= 0 else None

    def persist(self, job_id: str) -> None:
        """Keep the job again until it is finalized once more (``reopen``)."""
        pipe = self._r.pipeline(transaction=False)
        for key in self._keys_of(job_id):
            pipe.persist(key)
        pipe.execute()

    def known(self, job_id: str) -> bool:
        """Whether Redis has the job's record."""
        return bool(self._r.hexists(keys.job(job_id), "total"))

    def unknown(self, job_ids: Iterable[str]) -> set[str]:
        """Those of ``job_ids`` whose record Redis does not have (one round trip)."""
        wanted = list(dict.fromkeys(job_ids))
        pipe = self._r.pipeline(transaction=False)
        for job_id in wanted:
            pipe.hexists(keys.job(job_id), "total")
        return {job_id for job_id, known in zip(wanted, pipe.execute()) if not known}

    def clear_leftovers(self, job_id: str, keep: Iterable[str] = ()) -> None:
        """Delete what steps still in progress when a job was lost wrote for it afterwards
        (claims, reservations, submit marks), before the job is made again; the parts named
        in ``keep`` (``pred``: predictions submitted meanwhile, then polled, not paid again)
        stay."""
        kept = {keys.job(job_id, part) for part in keep}
        pattern = keys.job(re.sub(r"([*?\[\]\\])", r"\\\1", job_id), "*")
        stale = [key for key in self._r.scan_iter(match=pattern, count=1000) if key not in kept]
        self._r.delete(keys.job(job_id), *stale)

    def epoch(self) -> datetime | None:
        """When this Redis's records begin (its first job since it was new, flushed or
        replaced); None when it holds no job at all."""
        value = self._r.get(keys.EPOCH)
        return datetime.fromtimestamp(int(value), timezone.utc) if value else None

    def missing(self, job_id: str) -> JobNotFound:
        """The error for a job Redis has no record of: ``JobLost`` when the job was submitted
        before this Redis's records begin (see the module's docstring)."""
        submitted = job_id_time(job_id)
        if submitted is not None:
            epoch = self.epoch()
            if epoch is None:
                return JobLost(job_id, ", and holds no job at all")
            if (epoch - submitted).total_seconds() > CLOCK_SLACK_S:
                return JobLost(job_id, f": its records begin {epoch:%Y-%m-%d %H:%M:%S} UTC, after the job was "
                                       f"submitted ({submitted:%Y-%m-%d %H:%M:%S} UTC)")
        return JobNotFound(f"no job {job_id!r} (see `editpipe jobs`)")

    def status(self, job_id: str) -> JobStatus:
        h = self._r.hgetall(keys.job(job_id))
        if "total" not in h:  # none, or what a step left after the record was lost
            raise self.missing(job_id)
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
        """The ``limit`` newest jobs; an index entry whose record is gone is dropped."""
        out = []
        for job_id in self._r.zrevrange(keys.JOBS, 0, limit - 1):
            try:
                out.append(self.status(job_id))
            except JobNotFound:
                self._r.zrem(keys.JOBS, job_id)
        return out

    def unfinished_with(self, name: str, value: str, scan: int = 1000) -> JobStatus | None:
        """The newest unfinished (queued or running) job, of the last ``scan``, whose record
        has field ``name`` equal to ``value``, or None (``editpipe run`` finds the job of the
        same plan this way, to continue it after a kill)."""
        job_ids = self._r.zrevrange(keys.JOBS, 0, scan - 1)
        pipe = self._r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), [name, "status"])
        for job_id, (found, status) in zip(job_ids, pipe.execute()):
            if found == value and status in ACTIVE:
                return self.status(job_id)
        return None

    def field(self, job_id: str, name: str) -> str | None:
        return self._r.hget(keys.job(job_id), name)

    def fields(self, job_id: str, *names: str) -> list[str | None]:
        """Several fields of the job's record in one round trip; ``JobLost`` when Redis no
        longer has the record (a message for the job was sent, so it had one)."""
        pipe = self._r.pipeline(transaction=False)
        pipe.hexists(keys.job(job_id), "total")
        pipe.hmget(keys.job(job_id), list(names))
        known, values = pipe.execute()
        if not known:
            raise JobLost(job_id)
        return values

    def set_fields(self, job_id: str, mapping: dict[str, str | int]) -> None:
        self._r.hset(keys.job(job_id), mapping=mapping)

    def output_root(self, job_id: str) -> str:
        """Where the job's outputs go (set when the job is created, never changed, so each
        process keeps it). ``JobLost`` when Redis has no record of the job: nothing is kept
        then, so a job rebuilt later is not sent to an empty root (the current folder)."""
        return self._output_cached(job_id)

    def _output_of(self, job_id: str) -> str:
        output = self.field(job_id, "output")
        if not output:
            raise JobLost(job_id)  # lru_cache keeps no answer for a call that raised
        return output

    def mark_running(self, job_id: str) -> None:
        """Note that the job's first submit is on its way (``mark_running.lua``). A job never
        goes back to queued, so each process does this once per job."""
        if job_id in self._marked_running:
            return
        self._mark_running(keys=[keys.job(job_id)], args=[datetime.now(timezone.utc).isoformat()])
        if len(self._marked_running) >= MARKED_RUNNING:
            self._marked_running.clear()
        self._marked_running.add(job_id)

    def stop(self, job_id: str, reason: str) -> None:
        """Stop submitting for this job (a 401, say); runs in flight still finish."""
        self._r.hsetnx(keys.job(job_id), "stop_reason", reason)

    def stop_reason(self, job_id: str) -> str | None:
        return self._r.hget(keys.job(job_id), "stop_reason")

    def pause(self, job_id: str, ttl_s: float) -> None:
        """Hold the job's runs back for ``ttl_s`` seconds: a run about to be submitted goes
        back to the queue untouched, while predictions in flight are still polled and
        collected. The holder renews the pause while it wants it, so a pause whose holder
        died lapses by itself."""
        self._r.set(keys.job(job_id, "paused"), 1, px=int(ttl_s * 1000))

    def unpause(self, job_id: str) -> None:
        self._r.delete(keys.job(job_id, "paused"))

    def cancel(self, job_id: str) -> JobStatus:
        status = self.status(job_id)
        if not status.done:
            self.stop(job_id, "cancelled")
            self._r.hset(keys.job(job_id), "cancel_requested", "1")
        return self.status(job_id)

    def flag(self, job_id: str, name: str) -> None:
        self._r.hset(keys.job(job_id), name, "1")

    def reopen(self, job_id: str, budget_usd: Decimal | None = None) -> None:
        """Make a finished job runnable again (``resume``): lift its stop, optionally with a
        new budget (a cap on the job's whole spend, what it spent before included)."""
        key = keys.job(job_id)
        self._r.hdel(key, "stop_reason", "cancel_requested", BUDGET_EXHAUSTED)
        fields: dict[str, str | int] = {"status": "running", "finished_at": "", "error": ""}
        if budget_usd is not None:
            # The job's own budget now, whatever its schedule's was (for its budget alerts).
            fields.update(budget_usd=str(budget_usd), budget_micros=to_micros(budget_usd), budget_of="job")
        self._r.hset(key, mapping=fields)
        self.persist(job_id)

    def set_final(self, job_id: str, status: str, finished_at: str) -> None:
        self._r.hset(keys.job(job_id), mapping={"status": status, "finished_at": finished_at})

    def set_error(self, job_id: str, message: str) -> None:
        self._r.hset(keys.job(job_id), "error", message)

    def finalized(self, job_id: str) -> None:
        """The job's records are written: take it off the to-finalize list."""
        self._r.zrem(keys.TO_FINALIZE, job_id)

    def stale_finalizations(self, older_than_s: float) -> list[str]:
        """Jobs whose last run finished over ``older_than_s`` ago and are still not finalized
        (their finalize task was lost)."""
        now = float(self._r.time()[0])
        return list(self._r.zrangebyscore(keys.TO_FINALIZE, "-inf", now - older_than_s))


def _run_fields(job_id: str, runs: Iterable[Run]) -> Iterable[tuple[str, str, str]]:
    """(key, field, value) of what stores ``runs``: a blueprint's head and image-set chunks,
    or a JSON per run."""
    if isinstance(runs, PlannedRuns):
        blueprint = runs.blueprint
        plan_key = keys.job(job_id, "plan")
        for chunk, text in blueprint.set_chunks():
            yield plan_key, f"sets:{chunk}", text
        yield plan_key, "head", blueprint.head()  # last: a head is only read with its sets there
        return
    runs_key = keys.job(job_id, "runs")
    for run in runs:
        yield runs_key, str(run.index), json.dumps(run.to_dict(), separators=(",", ":"))
