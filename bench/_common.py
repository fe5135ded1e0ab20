"""What the benchmarks share: the servers they start, the work they submit, the figures they
compute from what the simulator saw.

Every server runs in its own process on a free loopback port, as in ``tests/conftest.py``:
a private redis-server, the simulator (``python -m pipeline.simulator``, so its CPU and its
GIL are its own), moto's S3 server, and Celery workers (``celery -A workers worker``).
"""

from __future__ import annotations

import bisect
import json
import csv
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Self

import httpx
import psutil

from pipeline.embedded import free_port, worker_env
from pipeline.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "bench-key"
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
MODEL_ENDPOINT = "/api/v3/openai/gpt-image-2/edit"


def machine() -> str:
    return (f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, "
            f"load average {os.getloadavg()[0]:.1f} at start")


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def _wait_http(url: str, proc: subprocess.Popen, what: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited at start (code {proc.returncode})")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s")


def _stop(proc: subprocess.Popen, group: bool = False) -> None:
    if proc.poll() is None:
        if group:
            os.killpg(proc.pid, signal.SIGTERM)
        else:
            proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        if group:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait()


class SimProcess:
    """The simulator in its own process, driven over its ``/_sim`` routes."""

    def __init__(self, proc: subprocess.Popen, base_url: str):
        self.proc = proc
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def stats(self) -> dict:
        return self.http.get("/_sim/stats").json()

    def predictions(self) -> list[dict]:
        return self.http.get("/_sim/predictions").json()

    def configure(self, **changes: object) -> dict:
        response = self.http.post("/_sim/config", json=changes)
        response.raise_for_status()
        return response.json()

    def reset(self) -> None:
        self.http.post("/_sim/reset").raise_for_status()


@contextmanager
def simulator(*, latency_s: float, images_per_minute: int | None = None,
              max_concurrent: int | None = None, image_long_side: int | None = None) -> Iterator[SimProcess]:
    """``python -m pipeline.simulator`` on a free port; inputs are not fetched (the runs name
    URLs that do not exist), nothing else differs from the default (outputs 256 px on their
    longer side unless ``image_long_side`` says otherwise)."""
    port = free_port()
    cmd = [sys.executable, "-m", "pipeline.simulator", "--port", str(port), "--latency", str(latency_s),
           "--api-key", API_KEY, "--no-fetch-inputs"]
    if image_long_side is not None:
        cmd += ["--image-long-side", str(image_long_side)]
    if images_per_minute is not None:
        cmd += ["--images-per-minute", str(images_per_minute)]
    if max_concurrent is not None:
        cmd += ["--max-concurrent", str(max_concurrent)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(base_url + "/_sim/stats", proc, "the simulator")
        sim = SimProcess(proc, base_url)
        yield sim
        sim.http.close()
    finally:
        _stop(proc)


@contextmanager
def moto_server() -> Iterator[subprocess.Popen]:
    """moto's S3 server in its own process; yields the process, its URL as ``.url``."""
    os.environ.update(AWS_ENV)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.url = f"http://127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        _wait_http(proc.url + "/moto-api/", proc, "the moto server")  # type: ignore[attr-defined]
        yield proc
    finally:
        _stop(proc)


def count_objects(s3_endpoint: str, bucket: str) -> int:
    import boto3

    pages = boto3.client("s3", endpoint_url=s3_endpoint).get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return sum(page.get("KeyCount", 0) for page in pages)


def editpipe_settings(*, redis_url: str, sim: SimProcess, images_per_minute: int, max_concurrent: int,
                      s3_endpoint: str | None = None, **extra: str) -> Settings:
    env = {
        "REDIS_URL": redis_url,
        "WAVESPEED_BASE_URL": sim.base_url,
        "WAVESPEED_API_KEY": API_KEY,
        "WAVESPEED_IMAGES_PER_MINUTE": str(images_per_minute),
        "WAVESPEED_MAX_CONCURRENT": str(max_concurrent),
        "EDITPIPE_REQUEST_TIMEOUT": "30",
        **extra,
    }
    if s3_endpoint:
        env["S3_ENDPOINT_URL"] = s3_endpoint
    return Settings.from_env(env)


@contextmanager
def celery_workers(env: Mapping[str, str], *, count: int, concurrency: int, logdir: Path,
                   app: str = "workers", pool: str = "prefork", cwd: Path = ROOT) -> Iterator[list[subprocess.Popen]]:
    """``count`` processes of ``celery -A <app> worker``, each in its own process group."""
    procs: list[subprocess.Popen] = []
    try:
        for i in range(count):
            with open(logdir / f"{app.replace('.', '-')}-{i}.log", "ab") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "WARNING",
                     "--pool", pool, "--concurrency", str(concurrency),
                     "-n", f"bench-{i}-{uuid.uuid4().hex[:6]}@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                ))
        yield procs
    finally:
        for proc in procs:
            _stop(proc, group=True)


def editpipe_worker_env(settings: Settings) -> dict[str, str]:
    env = worker_env(settings)
    env.update(AWS_ENV)
    env["S3_ENDPOINT_URL"] = settings.s3_endpoint_url or ""
    env.pop("WAVESPEED_TIER", None)  # the explicit numbers of ``settings`` are the limits
    return env


@contextmanager
def editpipe_workers(settings: Settings, *, count: int, concurrency: int,
                     logdir: Path) -> Iterator[list[subprocess.Popen]]:
    """``count`` editpipe worker processes on ``settings``, yielded once their pools are forked."""
    with celery_workers(editpipe_worker_env(settings), count=count, concurrency=concurrency, logdir=logdir) as procs:
        wait_workers_ready(procs, logdir)
        yield procs


@contextmanager
def workdir(under: str | None = None) -> Iterator[Path]:
    """A temporary folder (in ``under``, else the system's) with ``redis/`` and ``logs/`` in
    it, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="editpipe-bench-", dir=under) as tmp:
        work = Path(tmp)
        for sub in ("redis", "logs"):
            (work / sub).mkdir()
        yield work


def wait_workers_ready(procs: list[subprocess.Popen], logdir: Path, timeout_s: float = 60) -> None:
    """Wait until every worker process has forked its pool (its children exist)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"a worker exited at start; see {logdir}")
        if all(psutil.Process(p.pid).children() for p in procs):
            time.sleep(1.0)  # connected to the broker shortly after the fork
            return
        time.sleep(0.1)
    raise RuntimeError(f"workers not ready within {timeout_s:.0f} s; see {logdir}")


# ---- memory ---------------------------------------------------------------------------

def _processes(pids: list[int]) -> Iterator[psutil.Process]:
    """These processes and all their descendants, each once; those already gone are left out."""
    seen: set[int] = set()
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in family:
            if proc.pid not in seen:
                seen.add(proc.pid)
                yield proc


def tree_rss(pids: list[int]) -> int:
    """Bytes of RSS of these processes and all their descendants, summed."""
    total = 0
    for proc in _processes(pids):
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler:
    """Samples the summed RSS of some process trees every ``interval_s``; keeps the peak."""

    def __init__(self, pids: list[int], interval_s: float = 0.5):
        self.pids = pids
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pids))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes and their descendants: the live ones',
    and those of children that exited and were waited for (counted in their parent's
    ``children_user`` and ``children_system``), so a pool child replaced during a
    measurement still counts. A process that exits unwaited-for between two readings is
    lost, as /proc keeps nothing of it."""
    total = 0.0
    for proc in _processes(pids):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


# ---- the work -------------------------------------------------------------------------

def write_feed_manifest(directory: Path, runs: int, output: str, name: str = "bench") -> Path:
    """A catalog feed of ``runs`` rows, one prompt: ``runs`` runs, each with its own run key
    (its row's title is in the prompt)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "feed.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "image_url", "title"])
        for i in range(runs):
            writer.writerow([f"sku-{i:06d}", f"https://cdn.example.com/products/{i:06d}.jpg", f"item {i}"])
    path = directory / "manifest.yaml"
    path.write_text(
        f"version: 1\nname: {name}\noutput: {output}\n"
        "catalog:\n  feed: feed.csv\n  id: sku\n  images: [image_url]\n  vars: [title]\n"
        "prompts:\n  - id: editorial\n    text: An editorial photograph of {title}, warm light.\n"
    )
    return path


# ---- what the simulator saw -----------------------------------------------------------

def created_times(predictions: list[dict]) -> list[float]:
    """Creation times (UTC epoch seconds, ms resolution) of the simulator's predictions."""
    return sorted(datetime.fromisoformat(p["created_at"]).timestamp()
                  for p in predictions)


def busiest_window(times: list[float], window_s: float = 60.0) -> int:
    """The most events in any half-open window ``[t, t + window_s)``."""
    most = 0
    for i, t in enumerate(times):
        most = max(most, bisect.bisect_left(times, t + window_s) - i)
    return most


def middle_rate(times: list[float], share: float = 0.8) -> float:
    """Starts per second over the middle ``share`` of the starts (by order)."""
    n = len(times)
    lo = int(n * (1 - share) / 2)
    hi = n - 1 - lo
    if hi <= lo or times[hi] == times[lo]:
        return 0.0
    return (hi - lo) / (times[hi] - times[lo])


def overall_rate(times: list[float]) -> float:
    """Starts per second from the first start to the last."""
    if len(times) < 2 or times[-1] == times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def submit_and_wait(settings: Settings, manifest: Path, *, timeout_s: float):
    """Plan ``manifest``, then submit it as ``editpipe submit --wait`` does and wait until the
    job is finalized. Returns ``(prepared, status, wall_s)``: the wall time runs from the
    submit (job recorded, first message sent) to the finalized job, planning excluded."""
    from pipeline.report import finalize_job
    from pipeline.state import State
    from pipeline.submission import follow, prepare, submit
    from workers.celery_app import job_enqueuer

    prepared = prepare(manifest, settings)
    state = State.from_url(settings.redis_url or "")
    enqueue = job_enqueuer(settings)
    started = time.perf_counter()
    job_id = submit(prepared, state, enqueue, finalize=finalize_job)
    status = follow(state, job_id, lambda s: None, interval_s=0.1, timeout_s=timeout_s)
    return prepared, status, time.perf_counter() - started


def baseline_works(prepared) -> list:
    """The same runs as ``prepared``'s plan, as the baseline loop takes them."""
    from baseline import Work

    from pipeline.execution import request_payload

    return [Work(run.run_key, request_payload(run, [ref.uri for ref in run.inputs]), run.output_key)
            for run in prepared.plan.runs]


def read_jsonl(path: Path) -> list[dict]:
    """The lines of a stored ``.jsonl`` file (none when it is not there)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
