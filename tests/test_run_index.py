"""The run-key index (pipeline/run_index.py) against real Redis and moto's S3 server:
batches written while a job runs (by count, or once the oldest line has waited), one segment
per finished job, nothing lost with a worker that dies between taking a batch and writing
it, old per-run markers still read; and what a job whose Redis was lost stored is found by
its sidecars, once, then from the index."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from decimal import Decimal

from pipeline.layout import sidecar_key
from pipeline.state import State, keys
from pipeline.ledger import utc_now
from pipeline.plan import Plan, Run
from pipeline.records import Sidecar
from pipeline.run_index import (
    BATCH,
    OpenMark,
    batch_key,
    fingerprint,
    index_line,
    job_key,
    mark_open,
    open_key,
    read_index,
    read_mark,
    read_segments,
    read_unwritten,
    write_batch_if_due,
    write_job_index,
)
from pipeline.storage import open_storage
from pipeline.submission import look_up_done, reopen_mark


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


def test_lines_that_waited_the_flush_time_are_written_at_the_next_output(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(3)
    job_id = _new_job(state, storage.root, runs)
    first = state.runs.finish_run(job_id, 0, outcome="succeeded", result={"index": 0},
                                  index_line=index_line(runs[0].run_key, runs[0].output_key))
    assert (first.index_pending, first.index_waited_s) == (1, 0)
    write_batch_if_due(state.index, storage, job_id, first.index_pending, first.index_waited_s)
    assert list(read_index(storage)) == []  # one line, just pushed: it waits for more
    time.sleep(0.2)
    second = state.runs.finish_run(job_id, 1, outcome="succeeded", result={"index": 1},
                                   index_line=index_line(runs[1].run_key, runs[1].output_key))
    assert second.index_pending == 2 and second.index_waited_s >= 0.2
    write_batch_if_due(state.index, storage, job_id, second.index_pending, second.index_waited_s, flush_after_s=0.2)
    assert dict(read_index(storage)) == {run.run_key: run.output_key for run in runs[:2]}
    third = state.runs.finish_run(job_id, 2, outcome="succeeded", result={"index": 2},
                                  index_line=index_line(runs[2].run_key, runs[2].output_key))
    assert (third.index_pending, third.index_waited_s) == (1, 0)  # the clock starts again with the next line


def _stored_by_a_job(storage, job_id: str, planned: list[Run], stored: int) -> None:
    """What a job of ``planned`` runs leaves when it is killed with its Redis: its open mark,
    and for its first ``stored`` runs an output and its sidecar."""
    mark_open(storage, OpenMark(job_id=job_id, created_at=utc_now(), runs=len(planned),
                                fingerprint=fingerprint(run.run_key for run in planned)))
    for run in planned[:stored]:
        storage.put_bytes(run.output_key, b"png")
        storage.put_text(sidecar_key(run.output_key), json.dumps(Sidecar(run, job_id, f"pred-{run.index}",
                                                                          Decimal("0.10")).to_dict()))


def test_a_plan_finds_what_a_job_redis_lost_stored_by_its_sidecars_and_indexes_it(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(10)
    _stored_by_a_job(storage, "lost-job", runs, 6)
    storage.put_bytes(runs[6].output_key, b"png")  # killed between the output and its sidecar
    other = Run(7, "f" * 64, "set-7", "p", 1, "m", "prompt", {}, (), runs[7].output_key, {})
    storage.put_text(sidecar_key(runs[7].output_key), json.dumps(Sidecar(other, "lost-job", "pred-x",
                                                                         Decimal("0.10")).to_dict()))
    plan = Plan("again", runs)

    done, changes = look_up_done(storage, plan, jobs=state.jobs)

    assert done == {run.run_key: run.output_key for run in runs[:6]}
    assert changes.unchanged == 6
    assert list(storage.list_keys("_index/open/")) == []  # this plan had the lost job's very runs
    assert dict(read_index(storage)) == done  # later plans find them in the index, no sidecar read
    assert look_up_done(storage, plan, jobs=state.jobs)[0] == done


def test_an_open_job_redis_still_has_is_left_to_its_own_index(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(4)
    job_id = _new_job(state, storage.root, runs)
    _stored_by_a_job(storage, job_id, runs, 2)  # outputs whose lines wait in Redis (none here)

    done, _ = look_up_done(storage, Plan("again", runs), jobs=state.jobs)

    assert done == {}  # its lines come from Redis (read_unwritten); no sidecar is read
    assert list(storage.list_keys("_index/")) == [open_key(job_id)]


def test_a_plan_of_other_runs_keeps_the_lost_jobs_mark(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(6)
    _stored_by_a_job(storage, "lost-job", runs, 3)

    # Not the lost job's runs: some of its outputs may be outside this plan.
    done, _ = look_up_done(storage, Plan("other", runs[1:]), jobs=state.jobs)

    assert set(done) == {run.run_key for run in runs[1:3]}
    assert open_key("lost-job") in set(storage.list_keys("_index/open/"))


def test_a_plan_without_redis_reads_sidecars_of_every_open_job_and_writes_nothing(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(4)
    job_id = _new_job(state, storage.root, runs)
    _stored_by_a_job(storage, job_id, runs, 2)

    done, _ = look_up_done(storage, Plan("again", runs))  # `editpipe plan`: it cannot tell a live job

    assert set(done) == {run.run_key for run in runs[:2]}
    assert list(storage.list_keys("_index/")) == [open_key(job_id)]


def test_a_jobs_whole_index_closes_its_mark(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(2)
    job_id = _new_job(state, storage.root, runs)
    _stored_by_a_job(storage, job_id, runs, 2)
    for run in runs:
        _succeed(state, storage, job_id, run)

    write_job_index(state.index, storage, job_id, state.runs.results(job_id))

    assert list(storage.list_keys("_index/")) == [job_key(job_id)]


def test_a_resumed_job_is_marked_open_again_as_it_was_submitted(settings, bucket, state):
    storage = open_storage(f"s3://{bucket}/out", settings)
    runs = _runs(3)
    mark = OpenMark(job_id=f"resumed-{time.time_ns()}", created_at=utc_now(), runs=3,
                    fingerprint=fingerprint(run.run_key for run in runs), manifest_dir="/somewhere", priority=2)
    state.jobs.create(mark.job_id, name="index", output=storage.root, runs=runs, total=3,
                      estimated_usd=Decimal("0.30"), budget_usd=None, created_at=mark.created_at,
                      extra={"open_mark": json.dumps(asdict(mark))})
    write_job_index(state.index, storage, mark.job_id, [])  # finalized: its mark is closed

    reopen_mark(state, storage, mark.job_id)  # as `editpipe resume` does before enqueueing

    assert read_mark(storage, mark.job_id) == mark
