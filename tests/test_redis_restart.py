"""Redis going away mid-job: restarted, or down for a while, with its append-only file on.

These tests start a redis-server of their own (``--appendonly yes`` in the test's folder),
stop it with SIGTERM and start it again on the same port and folder, as an operator's
restart does; the session's Redis is not touched. Workers run at the production visibility
timeout (600 s), so nothing here waits for the broker to hand a message back. What is
proven is what the processes and the provider saw: every worker process still alive, the
job finished with every run succeeded, the ledger equal to the bill, no prediction
submitted twice, and the commands a person watches with neither exiting nor hanging.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from conftest import API_KEY, AWS_ENV, ROOT, Workers, make_image, many_runs_manifest, read_jsonl
from pipeline.callbacks import run_token
from pipeline.embedded import RestartableRedis as RedisServer
from pipeline.embedded import worker_env
from pipeline.report import finalize_job
from pipeline.provider import WaveSpeedClient
from pipeline.settings import Settings
from pipeline.simulator.webhooks import new_event_id, signed_headers
from pipeline.state import State
from pipeline.submission import follow, prepare, submit
from pipeline.webhooks import WebhookServer
from workers import names
from workers.celery_app import job_enqueuer, make_app

pytestmark = pytest.mark.timeout(240)
EDITPIPE = str(Path(sys.executable).parent / "editpipe")
NOT_ANSWERING = "is not answering"


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("own-redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def own_settings(own_redis: RedisServer, s3_endpoint: str, simulator) -> Settings:
    """The session settings' pattern, on this module's Redis and at the production
    visibility timeout; 30 predictions at a time (see ``slow_sim``)."""
    return Settings.from_env(
        {
            "REDIS_URL": own_redis.url,
            "S3_ENDPOINT_URL": s3_endpoint,
            "WAVESPEED_BASE_URL": simulator.base_url,
            "WAVESPEED_API_KEY": API_KEY,
            "EDITPIPE_POLL_INITIAL": "0.3",
            "EDITPIPE_POLL_MAX": "2",
            "EDITPIPE_MAX_RETRIES": "6",
            "WAVESPEED_TIER": "ultra",
            "WAVESPEED_MAX_CONCURRENT": "30",
            "EDITPIPE_REQUEST_TIMEOUT": "5",
        }
    )


@pytest.fixture(scope="module")
def own_workers(own_settings: Settings, tmp_path_factory):
    """Three workers, kept across this module's tests: those that lived through one fault
    meet the next."""
    w = Workers(own_settings, tmp_path_factory.mktemp("worker-logs"))
    w.start(count=3, concurrency=4)
    wait_for(lambda: w.logs().count(" ready.") == 3)  # each consuming before a fault is timed
    yield w
    w.kill_all(signal.SIGTERM)


@pytest.fixture
def slow_sim(sim):
    """30 predictions at a time for 1 s each: a fault after the first 10 runs lands with
    runs finished, runs in flight and runs not started."""
    sim.configure(latency_s=1.0, jitter_s=0.3, max_concurrent=30)
    return sim


def wait_for(check, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def assert_all_paid_once(status, workers: Workers, sim, s3, bucket: str) -> None:
    """Every worker alive, every run succeeded, the ledger equal to the bill, no duplicate."""
    alive = [p.poll() is None for p in workers.procs]
    assert all(alive), f"workers alive: {alive}\n" + workers.logs()[-4000:]
    assert status.done and status.status == "succeeded" and status.succeeded == status.total == 60, status
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    stats = sim.stats()
    assert stats["duplicate_submissions"] == 0
    assert len(ledger) == stats["billed_count"] == 60
    assert sum((Decimal(line["cost_usd"]) for line in ledger), Decimal("0")) == Decimal(stats["billed_usd"])
    assert "Unrecoverable error" not in workers.logs()


def test_a_redis_restart_mid_job_stops_no_worker_and_pays_nothing_twice(
    tmp_path, own_settings, own_redis, own_workers, slow_sim, bucket, s3
):
    state = State.from_url(own_settings.redis_url or "")
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=30)
    job_id = submit(prepare(manifest, own_settings), state, job_enqueuer(own_settings), finalize=finalize_job)
    wait_for(lambda: state.jobs.status(job_id).finished >= 10)

    own_redis.stop()
    time.sleep(3)
    own_redis.start()
    status = follow(state, job_id, lambda s: None, interval_s=0.5, timeout_s=90)

    print(f"\nrestart: {status.succeeded}/{status.total} succeeded, billed {slow_sim.stats()['billed_count']}, "
          f"duplicates {slow_sim.stats()['duplicate_submissions']}")
    assert_all_paid_once(status, own_workers, slow_sim, s3, bucket)


def test_a_message_a_worker_held_for_later_is_handed_back_after_a_restart_not_after_the_visibility_timeout(
    tmp_path, own_settings, own_redis, own_workers, slow_sim, bucket, s3
):
    # The job's first message waits 5 s in a worker (a countdown), across the restart: kombu
    # cannot hand it back while Redis is down, so without the consumer's hand-back it would
    # come back only with the visibility timeout, 600 s later.
    app = make_app(own_settings)
    state = State.from_url(own_settings.redis_url or "")
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/later", sets=2)
    job_id = submit(prepare(manifest, own_settings), state,
                    lambda job: app.send_task(names.ENQUEUE_JOB, (job,), countdown=5), finalize=finalize_job)
    time.sleep(1.5)

    own_redis.stop()
    time.sleep(3)
    own_redis.start()
    status = follow(state, job_id, lambda s: None, interval_s=0.5, timeout_s=60)

    assert status.done and status.succeeded == 4, status
    assert "handed 1 message(s)" in own_workers.logs()


def test_a_long_outage_ends_neither_submit_wait_nor_status_and_the_job_finishes(
    tmp_path, own_settings, own_redis, own_workers, slow_sim, bucket, s3
):
    env = worker_env(own_settings) | AWS_ENV | {"S3_ENDPOINT_URL": own_settings.s3_endpoint_url or ""}
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=30)
    waiting = subprocess.Popen([EDITPIPE, "submit", str(manifest), "--wait"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_id = (waiting.stdout.readline() if waiting.stdout else "").strip()
    state = State.from_url(own_settings.redis_url or "")
    wait_for(lambda: state.jobs.status(job_id).finished >= 10)

    own_redis.stop()
    asking = subprocess.Popen([EDITPIPE, "status", job_id], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(20)
    running = [waiting.poll(), asking.poll()]
    own_redis.start()
    out, err = waiting.communicate(timeout=90)
    status_out, status_err = asking.communicate(timeout=30)

    assert running == [None, None], f"a command exited while Redis was down: {running}\n{err}\n{status_err}"
    assert waiting.returncode == 0, err
    assert asking.returncode == 0 and f"Job {job_id}" in status_out, status_err
    for said in (err, status_err):
        assert said.count(NOT_ANSWERING) == 1 and "Traceback" not in said, said
    status = state.jobs.status(job_id)
    print(f"\n20 s outage: {status.succeeded}/{status.total} succeeded, billed {slow_sim.stats()['billed_count']}, "
          f"duplicates {slow_sim.stats()['duplicate_submissions']}")
    assert_all_paid_once(status, own_workers, slow_sim, s3, bucket)


def test_the_webhook_server_rides_out_a_redis_restart(own_settings, own_redis, sim, tmp_path):
    hooked = own_settings.with_overrides(webhook_secret=SecretStr("hook-secret"))
    with WaveSpeedClient(hooked.base_url, API_KEY) as client:  # a prediction the provider made
        image = client.upload(make_image(tmp_path / "in.png"))
        prediction = client.submit("/api/v3/openai/gpt-image-2/edit", {"images": [image], "prompt": "p"})
        wait_for(lambda: client.result(prediction.id).completed)
        done = client.result(prediction.id)
        outputs, nsfw = done.outputs, done.nsfw
    State.from_url(hooked.redis_url or "").runs.record_prediction("job-1", 3, prediction.id)
    body = json.dumps({"id": prediction.id, "status": "completed", "outputs": outputs}).encode()
    sent: list[tuple] = []
    server = WebhookServer(hooked, lambda *args: sent.append(args)).start()
    try:
        own_redis.stop()
        answer: list[httpx.Response] = []
        post = threading.Thread(target=lambda: answer.append(httpx.post(
            f"{server.base_url}/webhook", timeout=60,
            params={"run": "job-1:3", "token": run_token("hook-secret", "job-1", 3)}, content=body,
            headers=signed_headers(sim.config.webhook_secret, new_event_id(), body))))
        post.start()
        time.sleep(3)
        own_redis.start()
        post.join(timeout=30)
    finally:
        server.stop()

    assert answer and answer[0].status_code == 200 and answer[0].json() == {"accepted": True}
    assert sent == [("job-1", 3, prediction.id, outputs, nsfw)]
