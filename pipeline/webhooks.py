"""Webhooks: the server the provider POSTs each finished prediction to (``editpipe webhook-server``).

Optional per deployment (``EDITPIPE_WEBHOOK_URL`` and ``EDITPIPE_WEBHOOK_SECRET``): each
submit carries a callback URL naming its run and signed with the secret (``callbacks``), so
a POST cannot make editpipe collect anything it did not submit. A completed prediction is
handed to the ``collect`` task (the poller hands a few at a time to ``collect_runs``; both
collect through ``execution.collect``), which claims collection once per run, so a webhook
and a poll that both see it done store and charge it once. Polling stays the fallback: a
lost webhook only means the next scheduled check finds it. A Redis outage is ridden out (the
state layer's bound); past it a POST is answered 503 with one plain log line.

An interface (layer 5). How the ``collect`` task is sent is passed in (``workers.celery_app.
collect_sender``, by the CLI), so the server itself imports nothing of ``workers``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from aiohttp import web

from .callbacks import checked_run
from .errors import SettingsError
from .provider import TERMINAL_OK
from .settings import Settings
from .state import UNAVAILABLE, State

log = logging.getLogger(__name__)


SendCollect = Callable[[str, int, str, list[str]], None]  # job id, run index, prediction id, outputs


def make_app(settings: Settings, send_collect: SendCollect) -> web.Application:
    if settings.webhook_secret is None or not settings.redis_url:
        raise SettingsError("the webhook server needs EDITPIPE_WEBHOOK_SECRET and REDIS_URL")
    secret = settings.webhook_secret.get_secret_value()
    runs = State.from_url(settings.redis_url).runs
    counts = {"received": 0, "collected": 0, "rejected": 0, "unavailable": 0}

    async def receive(request: web.Request) -> web.Response:
        counts["received"] += 1
        run = checked_run(secret, request.query.get("run", ""), request.query.get("token", ""))
        if run is None:
            counts["rejected"] += 1
            return web.json_response({"error": "unknown run or bad token"}, status=403)
        job_id, index = run
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "not JSON"}, status=400)
        data = body.get("data", body) if isinstance(body, dict) else {}
        prediction_id, status = str(data.get("id") or ""), data.get("status")
        # Blocking Redis and broker calls, off the event loop. Both ride out a Redis outage
        # (the state layer's RIDE_OUT_S, the app's publish retries); past that the provider
        # is told to try later, and the poll collects the prediction anyway.
        try:
            known = await asyncio.to_thread(runs.prediction_of, job_id, index)
        except UNAVAILABLE as exc:
            return unavailable("Redis is not answering", exc)
        if known != prediction_id:
            # Not (yet) recorded as this run's prediction: the poll will settle it.
            return web.json_response({"accepted": False})
        if status == TERMINAL_OK:
            outputs = [str(o) for o in data.get("outputs") or []]
            try:
                await asyncio.to_thread(send_collect, job_id, index, prediction_id, outputs)
            except Exception as exc:  # noqa: BLE001 - the broker's errors are kombu's; the poll is the fallback
                return unavailable("the collect task could not be sent", exc)
            counts["collected"] += 1
        return web.json_response({"accepted": True})

    def unavailable(what: str, exc: Exception) -> web.Response:
        counts["unavailable"] += 1
        log.warning("webhook not taken: %s (%s); the provider may send it again, and the poll collects it", what, exc)
        return web.json_response({"error": f"{what}; try again later"}, status=503)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(counts)

    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/webhook", receive)
    app.router.add_get("/stats", stats)
    return app


class WebhookServer:
    """The webhook receiver on a background thread (for tests and the embedded run)."""

    def __init__(self, settings: Settings, send_collect: SendCollect, host: str = "127.0.0.1", port: int = 0):
        self.settings, self.send_collect, self.host, self.port = settings, send_collect, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def start(self) -> "WebhookServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.settings, self.send_collect), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://{self.host}:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
