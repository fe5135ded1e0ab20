"""The run-index lines of running jobs that are not in storage yet (see ``pipeline.run_index``).

Per job, ``index-pending`` (a list: lines pushed by ``runs.finish_run`` in the step that
charges the run) and ``index-batches`` (batch number -> lines taken but not yet written).
Guaranteed: a line is taken into one batch only, and stays in Redis until its batch is
written or the job's whole index is (``forget``).
"""

from __future__ import annotations

from collections.abc import Iterator

from . import keys
from .connection import Connection


class IndexPending:
    """Run-index lines waiting to be written to storage, per job."""

    def __init__(self, conn: Connection):
        self._r = conn.redis
        self._take = conn.script("index_take.lua")

    def take_batch(self, job_id: str, at_least: int) -> tuple[int, str] | None:
        """The job's pending run-index lines as ``(batch number, text)``, moved aside until
        ``batch_written``; None when fewer than ``at_least`` are pending."""
        taken = self._take(
            keys=[keys.job(job_id, "index-pending"), keys.job(job_id), keys.job(job_id, "index-batches")],
            args=[at_least],
        )
        return (int(taken[0]), taken[1]) if taken else None

    def batch_written(self, job_id: str, batch: int) -> None:
        self._r.hdel(keys.job(job_id, "index-batches"), batch)

    def forget(self, job_id: str) -> None:
        """Finalize wrote the job's whole index: nothing pending is needed any more."""
        self._r.delete(keys.job(job_id, "index-pending"), keys.job(job_id, "index-batches"))

    def unwritten(self, output_root: str) -> Iterator[str]:
        """Run-index text of every job under ``output_root`` not yet in storage: pending lines,
        and batches taken but not yet written (several lines each). Only a job still running
        (or finalizing) has any; finalize drops them once its whole index is written."""
        ids = self._r.zrange(keys.JOBS, 0, -1)
        pipe = self._r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(keys.job(job_id), "output")
        same_root = [job_id for job_id, output in zip(ids, pipe.execute()) if output == output_root]
        for job_id in same_root:
            pipe.lrange(keys.job(job_id, "index-pending"), 0, -1)
            pipe.hvals(keys.job(job_id, "index-batches"))
        for texts in pipe.execute():
            yield from texts
