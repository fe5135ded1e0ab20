"""A Redis that lost its data, against the session's redis-server, moto and the simulator with
real workers: the job is reported lost in plain words (``status``, ``jobs``, the workers'
log), ``editpipe resume JOB --output ROOT`` rebuilds it from storage and pays again for at
most the predictions it says were in flight; and a job killed before it finished leaves no
output that the next plan of the same manifest pays for again.

``FLUSHALL`` stands for every way Redis loses its data (a restart without persistence, a
flush, a new server): each leaves the same empty Redis behind.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter
from decimal import Decimal

import pytest
from click.testing import CliRunner

from conftest import AWS_ENV, many_runs_manifest, read_jsonl
from pipeline.cli.main import main
from pipeline.embedded import worker_env
from pipeline.report import finalize_job
from pipeline.settings import Settings
from pipeline.state import State
from pipeline.submission import follow, prepare, submit
from workers import names
from workers.celery_app import job_enqueuer, make_app

PRICE = Decimal("0.10")
RUNS = 16  # 8 image sets × 2 prompts
CAP = 4  # the account's predictions in flight: the bound a rebuild reports


@pytest.fixture
def capped(settings: Settings) -> Settings:
    """The session's settings at the production visibility timeout, with a small account."""
    return settings.with_overrides(max_concurrent=CAP, visibility_timeout_s=600)


def _cli(settings: Settings, *args: str):
    env = worker_env(settings) | AWS_ENV | {"S3_ENDPOINT_URL": settings.s3_endpoint_url or ""}
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _run_until(state: State, job_id: str, succeeded: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while state.jobs.status(job_id).succeeded < succeeded:
        assert time.monotonic() < deadline, f"{job_id} did not reach {succeeded} outputs"
        time.sleep(0.05)


def _stored_run_keys(s3, bucket: str) -> set[str]:
    """The run keys of every sidecar under the output root (outputs paid for)."""
    keys = [obj["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="out/")
            for obj in page.get("Contents", ()) if obj["Key"].endswith(".json")
            and not obj["Key"].startswith(("out/jobs/", "out/_index/"))]
    return {json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["run_key"] for key in keys}


def test_a_job_whose_redis_was_flushed_is_reported_lost_and_rebuilt_from_storage(
        capped, bucket, s3, sim, workers, r, tmp_path):
    sim.configure(latency_s=1.0, jitter_s=0.2)
    workers.settings = capped
    workers.start(1, concurrency=4)
    state = State.from_url(capped.redis_url or "")
    root = f"s3://{bucket}/out"
    manifest = many_runs_manifest(tmp_path, root, sets=RUNS // 2)
    job_id = submit(prepare(manifest, capped, state=state), state, job_enqueuer(capped), finalize=finalize_job)
    _run_until(state, job_id, 5)

    r.flushall()  # Redis lost its data mid-job: predictions are in flight

    status = _cli(capped, "status", job_id)
    assert status.exit_code == 1 and "lost" in status.output and f"editpipe resume {job_id}" in status.output
    status = _cli(capped, "status", job_id, "--output", root)
    assert status.exit_code == 1
    assert f"Job {job_id}: lost" in status.output and f"editpipe resume {job_id} --output {root}" in status.output
    listed = _cli(capped, "jobs", "--output", root)
    assert listed.exit_code == 0 and re.search(rf"{job_id}.*lost", listed.output)

    # A message for the job reaches a worker after the loss (a resume, a finalize): dropped
    # with one plain line, nothing submitted.
    submits = sim.stats()["submits"]
    app = make_app(capped)
    app.send_task(names.ENQUEUE_RUNS, (job_id, [14, 15]))
    app.send_task(names.FINALIZE, (job_id,))
    deadline = time.monotonic() + 30
    while f"dropping the messages of job {job_id}" not in workers.logs():
        assert time.monotonic() < deadline, workers.logs()[-3000:]
        time.sleep(0.1)
    assert 1 <= workers.logs().count(f"dropping the messages of job {job_id}") <= 4  # once per process
    assert "Traceback" not in workers.logs()
    time.sleep(1.5)  # the predictions in flight at the loss complete, and are billed
    stored = _stored_run_keys(s3, bucket)
    assert sim.stats()["submits"] == submits and len(stored) >= 5

    resumed = _cli(capped, "resume", job_id, "--output", root)
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(stored)} succeeded" in resumed.output, resumed.output
    found = re.search(r"up to (\d+) prediction\(s\) may have been in flight", resumed.output)
    assert found, resumed.output
    in_flight = int(found.group(1))
    assert in_flight == min(CAP, RUNS - len(stored))
    final = follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=60)

    assert final.status == "succeeded" and final.succeeded == RUNS
    results = read_jsonl(s3, bucket, f"out/jobs/{job_id}/results.jsonl")
    assert [line["status"] for line in results] == ["succeeded"] * RUNS
    ledger = read_jsonl(s3, bucket, f"out/jobs/{job_id}/ledger.jsonl")
    billed = {p["id"]: p for p in sim.predictions() if p["billed"]}
    paid_per_run = Counter(p["run_key"] for p in billed.values())
    assert sorted(line["run_key"] for line in ledger) == sorted(line["run_key"] for line in results)
    assert {line["prediction_id"] for line in ledger} <= set(billed)  # every line a real charge
    assert max(paid_per_run.values()) <= 2 and sum(n - 1 for n in paid_per_run.values()) <= in_flight
    unrecorded = [p for pid, p in billed.items() if pid not in {line["prediction_id"] for line in ledger}]
    assert len(unrecorded) == sum(n - 1 for n in paid_per_run.values())  # only the in-flight ones
    assert sum(Decimal(line["cost_usd"]) for line in ledger) == PRICE * len(ledger) == final.spent_usd
    assert Decimal(sim.stats()["billed_usd"]) - final.spent_usd == PRICE * len(unrecorded)
    summary = json.loads(s3.get_object(Bucket=bucket, Key=f"out/jobs/{job_id}/summary.json")["Body"].read())
    assert summary["rebuilt"]["possibly_paid_twice"] == in_flight
    assert not list(s3.list_objects_v2(Bucket=bucket, Prefix="out/_index/open/").get("Contents", ()))

    # Lost again once finished: its records in storage are whole, and it is shown from them;
    # a rebuild takes them as they are and has nothing to run or pay.
    r.flushall()
    status = _cli(capped, "status", job_id, "--output", root)
    assert status.exit_code == 0 and "succeeded (from its records in storage" in status.output
    again = _cli(capped, "resume", job_id, "--output", root)
    assert again.exit_code == 0, again.output
    assert f"{RUNS} succeeded" in again.output and "0 to run" in again.output
    assert "in flight" not in again.output
    assert read_jsonl(s3, bucket, f"out/jobs/{job_id}/ledger.jsonl") == ledger
    assert state.jobs.status(job_id).status == "succeeded" and state.jobs.status(job_id).spent_usd == final.spent_usd


def test_a_finalize_message_for_a_job_with_runs_to_go_leaves_it_running(capped, bucket, s3, sim, workers, tmp_path):
    """A finalize message older than its job (one sent while Redis had lost the job and taken
    after ``resume`` rebuilt it) must not write the records of a job whose runs are still
    going, nor set its final status: the job finalizes once, after its last run."""
    sim.configure(latency_s=2.0, jitter_s=0.0)
    workers.settings = capped
    workers.start(1, concurrency=4)
    state = State.from_url(capped.redis_url or "")
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=4)
    job_id = submit(prepare(manifest, capped, state=state), state, job_enqueuer(capped), finalize=finalize_job)

    make_app(capped).send_task(names.FINALIZE, (job_id,))
    deadline = time.monotonic() + 30
    while f"job {job_id}: not finalizing" not in workers.logs() and not state.jobs.status(job_id).done:
        assert time.monotonic() < deadline, workers.logs()[-3000:]
        time.sleep(0.05)
    assert state.jobs.status(job_id).status in ("queued", "running")  # not finalized with runs to go
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"out/jobs/{job_id}/results.jsonl")

    final = follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=60)
    assert final.status == "succeeded" and final.succeeded == 8
    results = read_jsonl(s3, bucket, f"out/jobs/{job_id}/results.jsonl")
    assert [line["status"] for line in results] == ["succeeded"] * 8
    assert Decimal(sim.stats()["billed_usd"]) == PRICE * 8


def test_outputs_of_a_job_killed_with_its_redis_are_not_paid_for_by_the_next_submit(
        settings, bucket, s3, sim, workers, r, tmp_path):
    sim.configure(latency_s=1.0, jitter_s=0.2)
    workers.settings = settings.with_overrides(max_concurrent=CAP, visibility_timeout_s=600)
    workers.start(1, concurrency=4)
    state = State.from_url(settings.redis_url or "")
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=RUNS // 2)
    killed = submit(prepare(manifest, settings, state=state), state, job_enqueuer(settings), finalize=finalize_job)
    _run_until(state, killed, 5)

    workers.kill_all(signal.SIGKILL)
    r.flushall()  # ... and its Redis with it: the index lines not yet in storage are gone
    time.sleep(1.5)  # predictions in flight complete at the provider, never collected
    stored = _stored_run_keys(s3, bucket)
    before = {p["id"] for p in sim.predictions()}

    workers.start(1, concurrency=4)
    prepared = prepare(manifest, settings, state=state)  # as `editpipe submit` plans
    assert set(prepared.done) == stored and prepared.changes.unchanged == len(stored)
    job_id = submit(prepared, state, job_enqueuer(settings), finalize=finalize_job)
    final = follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=60)

    assert final.status == "succeeded" and final.skipped == len(stored) and final.succeeded == RUNS - len(stored)
    paid_now = [p for p in sim.predictions() if p["billed"] and p["id"] not in before]
    assert not {p["run_key"] for p in paid_now} & stored  # nothing stored was paid for again
    assert len(paid_now) == RUNS - len(stored)
    # The killed job's mark is closed (this plan had its runs): the next plan reads no sidecar.
    assert [obj["Key"] for obj in s3.list_objects_v2(Bucket=bucket, Prefix="out/_index/open/").get("Contents", ())
            ] == []
