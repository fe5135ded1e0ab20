"""The simulated provider's back end: runs each prediction from creation to a terminal status.

A prediction is one asyncio task that fetches its inputs, draws its output from the first
one, sleeps until its completion time and finishes; no thread per prediction, so thousands
in flight cost little. Everything runs on the simulator's event loop except the drawing,
which two render threads do (bounded: a burst of big inputs queues, it does not pile up
decoded pictures in memory).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp

from ..modelspec import ModelSpec, load_model_specs
from .config import SimConfig
from .images import OutputImages, Rendered, UndecodableInput, check_image, derive
from .state import ACTIVE, Prediction, SimState
from .uploads import MAX_UPLOAD_BYTES, UploadStore
from .webhooks import deliver

log = logging.getLogger(__name__)

FETCH_TIMEOUT_S = 10.0
INPUT_UNREACHABLE_CODE = 1402
RENDER_THREADS = 2


def _load_specs(cfg: SimConfig) -> dict[str, ModelSpec]:
    # A simulator pointed at a folder without specs simply accepts any option value.
    if not cfg.models_dir.is_dir() or not any(cfg.models_dir.glob("*.yaml")):
        return {}
    return load_model_specs(cfg.models_dir)


class Engine:
    """Holds the current config and account state, and runs predictions to completion.

    Guarantees: every created prediction reaches exactly one terminal status (completed,
    failed, or cancelled by ``reset``/``close``), and it is billed only if completed.
    """

    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        self.specs: Mapping[str, ModelSpec] = _load_specs(cfg)
        self.state = SimState(cfg.seed)
        self.uploads = UploadStore()
        self.images = OutputImages()
        self._renderer = ThreadPoolExecutor(RENDER_THREADS, thread_name_prefix="sim-render")
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT_S))

    async def close(self) -> None:
        await self._cancel_all("cancelled: simulator stopped")
        self._renderer.shutdown(wait=False, cancel_futures=True)
        if self._session is not None:
            await self._session.close()

    def configure(self, changes: Mapping[str, Any]) -> SimConfig:
        cfg = self.cfg.changed(changes)
        if cfg.models_dir != self.cfg.models_dir:
            self.specs = _load_specs(cfg)
        if "seed" in changes:
            self.state.rng.seed(cfg.seed)
        self.cfg = cfg
        return cfg

    async def reset(self) -> None:
        """Forget predictions and counters; predictions still running end ``cancelled``.

        Uploaded files are kept: their URLs may already sit in a client's manifest.
        """
        await self._cancel_all("cancelled: simulator reset")
        self.state = SimState(self.cfg.seed)

    async def _cancel_all(self, reason: str) -> None:
        for pred in self.state.predictions.values():
            if pred.status in ACTIVE:
                self.state.cancel(pred, reason)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def launch(self, pred: Prediction, duration_s: float) -> None:
        """Start running ``pred``; it finishes ``duration_s`` after now at the earliest."""
        loop = asyncio.get_running_loop()
        self._spawn(self._run(pred, self.state, loop.time() + duration_s))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, pred: Prediction, state: SimState, finish_at: float) -> None:
        state.start_processing(pred)
        loop = asyncio.get_running_loop()
        rendered: Rendered | None = None
        if self.cfg.fetch_inputs:
            fetched = await asyncio.gather(*(self._fetch_input(url) for url in pred.images))
            for index, (_, reason) in enumerate(fetched, 1):
                if reason is not None:
                    state.fail(pred, f"could not fetch input image {index}: {reason}", INPUT_UNREACHABLE_CODE)
                    self._notify(pred, state)
                    return
            first_input = fetched[0][0]
            del fetched  # only the first input is drawn; the others were only checked
            if pred.ending is None:
                try:
                    rendered = await loop.run_in_executor(
                        self._renderer, derive, first_input, pred.prompt, pred.aspect_ratio,
                        pred.output_format, self.cfg.image_long_side,
                    )
                except UndecodableInput as exc:
                    state.fail(pred, f"could not decode input image 1: {exc}", INPUT_UNREACHABLE_CODE)
                    self._notify(pred, state)
                    return
        await asyncio.sleep(max(0.0, finish_at - loop.time()))
        if pred.ending is not None:
            state.fail(pred, pred.ending.error, pred.ending.code, pred.ending.status)
        else:
            cfg = self.cfg
            # Without fetched inputs (benchmarks) every output is one shared, cached picture.
            pred.rendered = rendered or self.images.get(pred.aspect_ratio, pred.output_format, cfg.image_long_side)
            output = (
                pred.rendered.b64
                if pred.base64_output
                else f"{pred.origin}/_sim/outputs/{pred.id}/0.{pred.rendered.ext}"
            )
            elapsed_ms = round((loop.time() - pred.created_mono) * 1000)
            state.complete(pred, [output], elapsed_ms, cfg.price_usd)
        self._notify(pred, state)

    async def _fetch_input(self, url: str) -> tuple[bytes, str | None]:
        """The bytes at ``url`` and why they are unusable, or ``None`` if they are a readable image."""
        assert self._session is not None, "Engine.open() was not awaited"
        try:
            async with self._session.get(url) as resp:
                if resp.status != 200:
                    return b"", f"HTTP {resp.status}"
                data = bytearray()
                async for chunk in resp.content.iter_chunked(1 << 16):
                    data += chunk
                    if len(data) > MAX_UPLOAD_BYTES:
                        return b"", "larger than 20 MB"
        except TimeoutError:
            return b"", f"timed out after {FETCH_TIMEOUT_S:g} s"
        except (aiohttp.ClientError, ValueError) as exc:
            return b"", str(exc) or type(exc).__name__
        content = bytes(data)
        return content, check_image(content)

    def _notify(self, pred: Prediction, state: SimState) -> None:
        if pred.webhook:
            assert self._session is not None, "Engine.open() was not awaited"
            self._spawn(deliver(self._session, pred.webhook, pred.data(), lambda: self.cfg, state.counters))
