"""The run-key index (pipeline/run_index.py) against real Redis and moto's S3 server:
batches written while a job runs, one segment per finished job, nothing lost with a worker
that dies between taking a batch and writing it, old per-run markers still read."""

from __future__ import annotations

import time
from decimal import Decimal

from pipeline.state import State, keys
from pipeline.ledger import utc_now
from pipeline.plan import Plan, Run
from pipeline.run_index import (
    BATCH,
    batch_key,
    index_line,
    job_key,
    read_index,
    read_segments,
    read_unwritten,
    write_batch_if_due,
    write_job_index,
)
from pipeline.storage import open_storage
from pipeline.submission import look_up_done


def _runs(count: int) -> list[Run]:
    return [Run(i, f"{i:064x}", f"set-{i}", "p", 1, "m", "prompt", {}, (), f"set-{i}/p.png", {})
            for i in range(count)]


def _new_job(state: State, output: str, runs: list[Run]) -> str:
    job_id = f"index-{time.time_ns()}"
    state.jobs.create(job_id, name="index", output=output, runs=runs, total=len(runs),
                estimated_usd=Decimal("0.10") * len(runs), budget_usd=None, created_at=utc_now())
    return job_id


def _succeed(state: State, storage, job_id: str, run: Run) -> None:
    result = {"index": run.index, "run_key": run.run_key, "status": "succeeded", "output": run.output_key}
    finished = state.runs.finish_run(job_id, run.index, outcome="succeeded", result=result,
                               index_line=index_line(run.run_key, run.output_key))
    write_batch_if_due(state.index, storage, job_id, finished.index_pending)


def test_batches_while_running_then_one_segment_per_job(settings, bucket, state, r):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(2 * BATCH + 37)
    job_id = _new_job(state, storage.root, runs)

    for run in runs[: 2 * BATCH + 10]:
        _succeed(state, storage, job_id, run)
    # Mid-job: two full batches are in storage, the last 10 lines still wait in Redis.
    assert sorted(storage.list_keys("_index/")) == [batch_key(job_id, 1), batch_key(job_id, 2)]
    assert {key for key, _ in read_index(storage)} == {run.run_key for run in runs[: 2 * BATCH]}

    for run in runs[2 * BATCH + 10:]:
        _succeed(state, storage, job_id, run)
    write_job_index(state.index, storage, job_id, state.runs.results(job_id))

    assert list(storage.list_keys("_index/")) == [job_key(job_id)]
    assert dict(read_index(storage)) == {run.run_key: run.output_key for run in runs}
    assert not r.exists(keys.job(job_id, "index-pending"), keys.job(job_id, "index-batches"))


def test_a_planner_that_listed_batches_before_finalize_deleted_them_still_sees_every_line(
        settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(2 * BATCH)
    job_id = _new_job(state, storage.root, runs)
    for run in runs:
        _succeed(state, storage, job_id, run)
    listed = list(storage.list_keys("_index/jobs/"))
    assert listed == [batch_key(job_id, 1), batch_key(job_id, 2)]

    write_job_index(state.index, storage, job_id, state.runs.results(job_id))  # between the listing and the reads

    assert not any(storage.exists(key) for key in listed)
    assert dict(read_segments(storage, listed)) == {run.run_key: run.output_key for run in runs}


def test_a_job_planned_while_another_runs_skips_what_that_one_made_and_has_not_yet_indexed(
        settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    elsewhere = open_storage(f"s3://{bucket}/elsewhere", settings)
    runs = _runs(BATCH + 30)
    running = _new_job(state, storage.root, runs)
    for run in runs[:BATCH + 20]:  # a batch in storage, 20 lines pending in Redis
        _succeed(state, storage, running, run)
    taken = state.index.take_batch(running, 1)  # and 10 more taken by a worker not done writing
    for run in runs[BATCH + 20:]:
        _succeed(state, storage, running, run)
    assert taken is not None and len(taken[1].splitlines()) == 20
    other = _new_job(state, elsewhere.root, runs[:5])  # same run keys, another output root
    for run in runs[:5]:
        _succeed(state, elsewhere, other, run)

    plan = Plan("again", runs)
    from_storage, _ = look_up_done(storage, plan)
    assert set(from_storage) == {run.run_key for run in runs[:BATCH]}
    done, changes = look_up_done(storage, plan, unwritten=list(read_unwritten(state.index, storage.root)))
    assert done == {run.run_key: run.output_key for run in runs}
    assert changes.unchanged == len(runs) and changes.new == 0
    assert dict(read_unwritten(state.index, elsewhere.root)) == {run.run_key: run.output_key for run in runs[:5]}


def test_a_batch_taken_by_a_worker_that_died_is_written_at_finalize(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(BATCH)
    job_id = _new_job(state, storage.root, runs)
    for run in runs:
        state.runs.finish_run(job_id, run.index, outcome="succeeded",
                        result={"index": run.index, "run_key": run.run_key, "status": "succeeded",
                                "output": run.output_key},
                        index_line=index_line(run.run_key, run.output_key))
    taken = state.index.take_batch(job_id, BATCH)  # ... and the worker dies before the write
    assert taken is not None and len(taken[1].splitlines()) == BATCH
    assert state.index.take_batch(job_id, 1) is None  # the lines are not handed out twice
    assert list(read_index(storage)) == []

    write_job_index(state.index, storage, job_id, state.runs.results(job_id))

    assert dict(read_index(storage)) == {run.run_key: run.output_key for run in runs}


def test_failed_and_skipped_runs_are_not_indexed(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(3)
    job_id = _new_job(state, storage.root, runs)
    _succeed(state, storage, job_id, runs[0])
    state.runs.finish_run(job_id, 1, outcome="failed", result={"index": 1, "run_key": runs[1].run_key,
                                                         "status": "failed", "output": None})
    state.runs.finish_run(job_id, 2, outcome="skipped", result={"index": 2, "run_key": runs[2].run_key,
                                                          "status": "skipped", "output": "elsewhere.png"})
    write_job_index(state.index, storage, job_id, state.runs.results(job_id))
    assert list(read_index(storage)) == [(runs[0].run_key, runs[0].output_key)]


def test_markers_of_the_earlier_layout_are_still_read(settings, bucket):
    storage = open_storage(f"s3://{bucket}/out", settings)
    storage.put_bytes(f"_index/runs/{'ab' * 32}.shoes%2Fred%3A2%3A3.png.done", b"")
    assert list(read_index(storage)) == [("ab" * 32, "shoes/red:2:3.png")]
