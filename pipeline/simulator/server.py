"""``Simulator``: the HTTP simulator served from a background thread with its own event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from aiohttp import web

from .app import make_app
from .config import SimConfig
from .engine import Engine

T = TypeVar("T")
# Long enough for a clean stop, short enough that a hanging sync-mode request cannot stall it.
SHUTDOWN_TIMEOUT_S = 1.0
CALL_TIMEOUT_S = 30.0


class Simulator:
    """A simulated WaveSpeed v3 API on ``base_url``, usable from synchronous code.

    ``start()`` returns once the server is listening; ``stop()`` ends every prediction still
    running (``cancelled``, not billed) and closes the port. ``stats()``, ``predictions()``,
    ``configure()`` and ``reset()`` run on the server's loop, so they never race a request.
    Also a context manager: ``with Simulator(cfg) as sim: ...``.
    """

    def __init__(self, cfg: SimConfig | None = None) -> None:
        self._initial = cfg or SimConfig()
        self._engine: Engine | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def config(self) -> SimConfig:
        return self._engine.cfg if self._engine else self._initial

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("the simulator is not running: call start() first")
        return f"http://{self._initial.host}:{self._port}"

    def start(self) -> "Simulator":
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        ready = threading.Event()
        failure: list[BaseException] = []
        self._thread = threading.Thread(
            target=self._serve, args=(ready, failure), name="editpipe-simulator", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._call_async(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = self._loop = self._engine = self._runner = None
        self._port = None

    def stats(self) -> dict[str, Any]:
        """The same dict as ``GET /_sim/stats``."""
        return self._call(lambda: self._require_engine().state.stats())

    def predictions(self) -> list[dict[str, Any]]:
        """The same list as ``GET /_sim/predictions``."""
        return self._call(lambda: [p.summary() for p in self._require_engine().state.predictions.values()])

    def configure(self, **changes: Any) -> SimConfig:
        """Change settings at runtime (not ``host``/``port``); returns the config now in force."""
        return self._call(lambda: self._require_engine().configure(changes))

    def reset(self) -> None:
        """Forget predictions and counters (uploaded files stay)."""
        self._call_async(self._require_engine().reset())

    def __enter__(self) -> "Simulator":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise RuntimeError("the simulator is not running: call start() first")
        return self._engine

    def _serve(self, ready: threading.Event, failure: list[BaseException]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._open())
        except BaseException as exc:  # Handed to the thread that called start().
            failure.append(exc)
            loop.close()
            ready.set()
            return
        ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _open(self) -> None:
        engine = Engine(self._initial)
        await engine.open()
        runner = web.AppRunner(
            make_app(engine), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        # A deep backlog so a burst of thousands of submits queues instead of being refused.
        site = web.TCPSite(runner, self._initial.host, self._initial.port, backlog=4096)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            await engine.close()
            raise
        self._engine, self._runner = engine, runner
        self._port = runner.addresses[0][1]

    async def _shutdown(self) -> None:
        engine, runner = self._require_engine(), self._runner
        await engine.close()
        if runner is not None:
            await runner.cleanup()

    def _call(self, fn: Callable[[], T]) -> T:
        async def run() -> T:
            return fn()

        return self._call_async(run())

    def _call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the simulator is not running: call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(CALL_TIMEOUT_S)
