"""Redis going away mid-job: restarted, or down for a while, with its append-only file on.

These tests start a redis-server of their own (``--appendonly yes`` in the test's folder),
stop it with SIGTERM and start it again on the same port and folder, as an operator's
restart does; the session's Redis is not touched. Workers run at the production visibility
timeout. What is proven is what the processes and the provider saw: every worker process
still alive, the job finished with every run succeeded, the ledger equal to the bill, no
prediction submitted twice.
"""

from __future__ import annotations

import signal
import subprocess
import time
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import API_KEY, Workers, many_runs_manifest, read_jsonl
from pipeline.embedded import free_port, redis_server_binary
from pipeline.report import finalize_job
from pipeline.settings import Settings
from pipeline.state import State, wait_until_up
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer

pytestmark = pytest.mark.timeout(240)


class RedisServer:
    """A redis-server with its append-only file on, restartable on the same port and folder."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.workdir / "redis.out", "ab")
        self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.workdir)],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until_up(self.url, alive=lambda: self.proc is not None and self.proc.poll() is None, attempts=400)

    def stop(self) -> None:
        """SIGTERM: Redis writes its append-only file out and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=20)
        self.proc = None

    def restart(self, down_s: float) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()


@pytest.fixture
def own_redis(tmp_path: Path):
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_settings(own_redis: RedisServer, s3_endpoint: str, simulator) -> Settings:
    """The session settings' pattern, on this test's Redis and at the production visibility
    timeout."""
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
            "EDITPIPE_REQUEST_TIMEOUT": "5",
        }
    )


@pytest.fixture
def own_workers(own_settings: Settings, tmp_path: Path):
    logdir = tmp_path / "worker-logs"
    logdir.mkdir()
    w = Workers(own_settings, logdir)
    yield w
    w.kill_all(signal.SIGTERM)


def ledger_total(lines: list[dict]) -> Decimal:
    return sum((Decimal(line["cost_usd"]) for line in lines), Decimal("0"))


def test_a_redis_restart_mid_job_stops_no_worker_and_pays_nothing_twice(
    tmp_path, own_settings, own_redis, own_workers, sim, bucket, s3
):
    # 10 at a time for 1 s each: the 60 runs take at least 6 s, so the restart lands mid-job.
    sim.configure(latency_s=1.0, jitter_s=0.3, max_concurrent=10)
    own_workers.settings = own_settings.with_overrides(max_concurrent=10)
    own_workers.start(count=3, concurrency=4)
    state = State.from_url(own_settings.redis_url or "")
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=30)
    job_id = submit(prepare(manifest, own_settings), state, job_enqueuer(own_settings), finalize=finalize_job)
    while state.jobs.status(job_id).finished < 10:
        time.sleep(0.2)

    own_redis.restart(down_s=3)
    status = follow(state, job_id, lambda s: None, interval_s=0.5, timeout_s=120)

    alive = [p.poll() is None for p in own_workers.procs]
    assert all(alive), f"workers alive: {alive}\n" + own_workers.logs()[-4000:]
    assert status.done and status.status == "succeeded", f"{status}\n" + own_workers.logs()[-4000:]
    assert status.succeeded == 60
    ledger = read_jsonl(s3, bucket, f"out/jobs/{job_id}/ledger.jsonl")
    stats = sim.stats()
    assert stats["duplicate_submissions"] == 0
    assert len(ledger) == stats["billed_count"] == 60
    assert ledger_total(ledger) == Decimal(stats["billed_usd"])
