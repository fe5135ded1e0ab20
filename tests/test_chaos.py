"""Chaos: one job through every fault at once, at the production visibility timeout.

A redis-server of the test's own (append-only file on), three workers, and a simulator that
drops 5% of submit answers, answers 5% of requests with a 5xx and fails 5% of predictions
(code 5000: submitted again).
Mid-job a worker's process group is SIGKILLed (and started again), Redis is restarted, and
another worker is SIGKILLed and not replaced. What is proven is what storage and the
provider saw: every planned run has a result (a failed one with its reason), no prediction
was paid twice beyond the recorded ``unconfirmed_submit`` lines, the ledger equals the bill
except for those lines (each one price), and no worker exited on its own.
(``bench/chaos.py`` is the longer version, with the seconds from each fault to the next start.)
"""

from __future__ import annotations

import signal
import os
import time
from collections import Counter
from decimal import Decimal

import pytest

from conftest import API_KEY, Workers, many_runs_manifest, read_jsonl
from pipeline.report import finalize_job
from pipeline.settings import Settings
from pipeline.state import State
from pipeline.submission import follow, prepare, submit
from test_redis_restart import RedisServer
from workers.celery_app import job_enqueuer

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def chaos_settings(tmp_path, s3_endpoint: str, simulator):
    server = RedisServer(tmp_path)
    server.start()
    settings = Settings.from_env({
        "REDIS_URL": server.url, "S3_ENDPOINT_URL": s3_endpoint, "WAVESPEED_BASE_URL": simulator.base_url,
        "WAVESPEED_API_KEY": API_KEY, "EDITPIPE_POLL_INITIAL": "0.3", "EDITPIPE_POLL_MAX": "2",
        "EDITPIPE_MAX_RETRIES": "6", "WAVESPEED_TIER": "ultra", "WAVESPEED_MAX_CONCURRENT": "20",
        "EDITPIPE_REQUEST_TIMEOUT": "5",
    })
    yield server, settings
    server.stop()


def wait_finished(state: State, job_id: str, at_least: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while state.jobs.status(job_id).finished < at_least:
        assert time.monotonic() < deadline, f"the job did not reach {at_least} finished runs"
        time.sleep(0.2)


def test_kills_a_redis_restart_and_a_faulty_provider_lose_no_run_and_pay_nothing_twice(
    tmp_path, chaos_settings, sim, bucket, s3
):
    server, settings = chaos_settings
    assert settings.visibility_timeout_s == Settings().visibility_timeout_s == 600
    sim.configure(latency_s=1.0, jitter_s=0.3, max_concurrent=20, drop_rate=0.05, error_5xx_rate=0.05,
                  fail_rate=0.05, seed=3)
    workers = Workers(settings, tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    workers.start(count=3, concurrency=4)
    try:
        state = State.from_url(settings.redis_url or "")
        manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=40)  # 80 runs
        job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job)

        wait_finished(state, job_id, 10)
        first = workers.procs[0]
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        workers.procs.remove(first)
        workers.start(count=1, concurrency=4)
        wait_finished(state, job_id, 25)
        server.stop()
        time.sleep(3)
        server.start()
        wait_finished(state, job_id, 40)
        second = workers.procs[0]
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
        workers.procs.remove(second)
        status = follow(state, job_id, lambda s: None, interval_s=0.5, timeout_s=200)
        exited = [p.returncode for p in workers.procs if p.poll() is not None]
    finally:
        workers.kill_all(signal.SIGTERM)

    assert status.done, status
    assert exited == [], "a worker exited on its own:\n" + workers.logs()[-4000:]
    results = read_jsonl(s3, bucket, f"out/jobs/{job_id}/results.jsonl")
    ledger = read_jsonl(s3, bucket, f"out/jobs/{job_id}/ledger.jsonl")
    assert len(results) == 80 and len({r["run_key"] for r in results}) == 80  # no run lost
    assert all(r["status"] == "succeeded" or (r["status"] == "failed" and r["error"]) for r in results)
    assert sum(r["status"] == "succeeded" for r in results) >= 60
    # A prediction the provider failed for now (code 5000) is submitted again, never the run's end.
    assert not [r for r in results if r["status"] == "failed" and r.get("code") == 5000]
    billed = [p for p in sim.predictions() if p["billed"]]
    unconfirmed = [line for line in ledger if line["kind"] == "unconfirmed_submit"]
    per_run, recorded = Counter(p["run_key"] for p in billed), Counter(line["run_key"] for line in unconfirmed)
    assert sum(max(0, n - 1 - recorded[key]) for key, n in per_run.items()) == 0  # nothing paid twice unrecorded
    confirmed = [line["prediction_id"] for line in ledger if line["kind"] != "unconfirmed_submit"]
    assert len(confirmed) == len(set(confirmed)) and set(confirmed) <= {p["id"] for p in billed}
    total = sum((Decimal(line["cost_usd"]) for line in ledger), Decimal(0))
    bill = Decimal(sim.stats()["billed_usd"])
    assert bill <= total <= bill + sum((Decimal(line["cost_usd"]) for line in unconfirmed), Decimal(0))
    assert all(Decimal(line["cost_usd"]) <= Decimal("0.10") for line in unconfirmed)
    print(f"\nchaos: {Counter(r['status'] for r in results)}, billed {len(billed)} = ${bill}, ledger ${total} "
          f"({len(unconfirmed)} unconfirmed), duplicates {sim.stats()['duplicate_submissions']}")
