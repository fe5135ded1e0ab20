"""Takeover: what a run that starts on the Redis of a dead one needs from it.

``editpipe run`` keeps its Redis on disk, so the same command run again after a kill finds
the job where it stopped. The processes of the earlier run held leases (a pump's, the
poller's), claims (a run being submitted or collected), upload locks and taken members of the
due index; each expires by itself, but only after its time to live: a start claim outlives
the longest submit (65 s at the defaults), a start check waits 90 s, a taken due member
30 s. ``release_dead`` drops them all in one step, so that the new workers start at once.

It is only correct when no process of the earlier run is alive: the embedded run's lock on its
state folder (``pipeline.embedded``) proves that. Never call it on a Redis that live workers
share (``REDIS_URL``): their work would be taken from under them.

``forget_finished`` keeps such a Redis the size of its unfinished jobs: a finalized job's
records, ledger and run index are in storage, and nothing reads its Redis data afterwards
(the embedded Redis is reachable only while its run lasts), so a kept Redis would otherwise
grow by every job's runs, run after run.
"""

from __future__ import annotations

from typing import NamedTuple

from . import keys
from .connection import Connection
from .jobs import ACTIVE


class Released(NamedTuple):
    keys: int  # leases, kick marks, claims and locks dropped
    due: int  # due-index members brought forward to now


class Takeover:
    """Release what dead processes held; count what they left in flight."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._release = conn.script("takeover_release.lua")
        self._in_flight = conn.script("runs_in_flight.lua")

    def release_dead(self) -> Released:
        """Drop every lease, kick mark, claim and upload lock, and make every due member due
        now (one atomic step). Only for a Redis no live process uses (see the module)."""
        patterns = [
            keys.task_lease("*"),
            keys.task_kick("*"),
            keys.job("*", "claim:*"),
            keys.job("*", "collecting:*"),
            keys.upload_lock("*"),
        ]
        dropped, due = self._release(keys=[keys.DUE], args=patterns)
        return Released(int(dropped), int(due))

    def in_flight(self, job_id: str) -> int:
        """Runs of the job submitted and not finished: predictions the provider holds (or held)
        whose results are still to be collected."""
        return int(self._in_flight(keys=[keys.job(job_id, "pred"), keys.job(job_id, "results")]))

    def forget_finished(self) -> int:
        """Delete every finalized job (a final status, off the to-finalize list): its record
        and all its parts. Returns how many. Only for a Redis no live process uses."""
        job_ids = self._r.zrange(keys.JOBS, 0, -1)
        pipe = self._r.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(keys.job(job_id), "status")
            pipe.zscore(keys.TO_FINALIZE, job_id)
        replies = pipe.execute()
        done = [job_id for job_id, status, pending in zip(job_ids, replies[::2], replies[1::2])
                if status is not None and status not in ACTIVE and pending is None]
        for job_id in done:
            parts = list(self._r.scan_iter(match=keys.job(job_id, "*"), count=1000))
            for start in range(0, len(parts), 500):
                self._r.unlink(*parts[start : start + 500])
            self._r.unlink(keys.job(job_id))
            self._r.zrem(keys.JOBS, job_id)
        return len(done)
