"""Webhooks: the server the provider POSTs each finished prediction to (``editpipe webhook-server``).

Optional per deployment (``EDITPIPE_WEBHOOK_URL`` and ``EDITPIPE_WEBHOOK_SECRET``): each
submit carries a callback URL naming its run and signed with that secret (``callbacks``).
A POST is taken only when all of these hold, checked in this order:

1. it is signed by the provider (``webhook_signature``): its ``webhook-signature`` is the
   HMAC the account's webhook secret makes over its id, timestamp and raw body, and its
   timestamp is within 300 s of now; else 401. The secret is fetched from the provider with
   the API key (``WaveSpeedClient.webhook_secret``) at the first webhook and kept (10
   minutes at most); a signature that does not match fetches it again, at most once a
   minute, so a rotated secret is picked up while forged POSTs cannot make the server
   hammer the provider (``AccountSecret``);
2. its URL token names a run this deployment submitted (``callbacks.checked_run``); else 403;
3. its event id was not handled before, nor its prediction collected through another event
   (``state.WebhookEvents``); else 401. An event is marked handled only once it was, so the
   provider's retry after our 503 is taken as new; of two deliveries of one event at once,
   the second gets 409 (try later);
4. the prediction is the one the run recorded (the one spot where another may be adopted).

What is downloaded is never decided by a webhook's body. On a genuine ``completed`` webhook
the server asks the provider for the prediction (``client.result``, with the API key) and
hands the ``collect`` task the outputs of THAT answer; a body claiming other outputs (or
``completed`` when the provider says otherwise) changes nothing. Chosen over letting the
collect task poll: the server's one GET costs the same as the poll it saves, the workers'
collect path stays as it is, and a provider that cannot be asked now is answered 503, so it
sends the webhook again while the scheduled poll remains the fallback. ``collect`` claims
collection once per run, so a webhook and a poll that both see it done store and charge it
once. A failed prediction's webhook is only acknowledged: the poll reads the failure and
judges its code.

Every POST is counted for the fleet's metrics (received, refused by reason, collected):
counted in memory and added to Redis once a second (``COUNTS_FLUSH_S``), so a count never
delays an answer and a Redis away only delays the counts. With ``metrics=True`` the server
also answers ``GET /metrics`` with the fleet's metrics (``pipeline.metrics``), read from Redis.

A Redis outage is ridden out (the state layer's bound); past it a POST is answered 503 with
one plain log line. The API key, the webhook secret and signatures are never logged or
answered. An interface (layer 5). How the ``collect`` task is sent is passed in
(``workers.celery_app.collect_sender``, by the CLI), so the server itself imports nothing
of ``workers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .adoption import settle_by_callback
from .callbacks import checked_run
from .errors import ProviderError, SettingsError
from .logs import redact, run_context
from .metrics import CONTENT_TYPE, exposition, fleet_registry
from .provider import TERMINAL_OK, WaveSpeedClient
from .settings import Settings
from .state import UNAVAILABLE, State
from .state.webhook_events import Begun
from .webhook_signature import Signed, SignatureRefused, matches, read_headers

log = logging.getLogger(__name__)

SECRET_REFETCH_S = 60.0  # at most one fetch of the account's secret per minute after the first
SECRET_MAX_AGE_S = 600.0  # and once it is this old
RELEASE_WAIT_S = 2.0  # how long a 503 waits for its event to be unmarked
COUNTS_FLUSH_S = 1.0  # how often the POSTs counted are added to the fleet's metrics

# job id, run index, prediction id, outputs, the provider's nsfw flags
SendCollect = Callable[[str, int, str, list[str], list[bool] | None], None]


class TryLater(Exception):
    """A webhook that could not be handled now (Redis, the broker or the provider away)."""


class AccountSecret:
    """The key the account's webhooks are signed with, fetched by ``fetch`` and kept.

    ``verify`` fetches it at first use; again when a signature does not match the key it
    holds, but at most once per ``refetch_s`` (a rotation is picked up within a minute, and
    a flood of forged POSTs costs the provider one request a minute); and again once the key
    is ``max_age_s`` old, so a secret rotated away (say, because it leaked) stops signing
    within that time even if no webhook with the new one came. A fetch that fails raises
    ``TryLater`` (a genuine webhook is then sent again); the key is never logged.
    """

    def __init__(self, fetch: Callable[[], str], refetch_s: float = SECRET_REFETCH_S,
                 max_age_s: float = SECRET_MAX_AGE_S):
        self._fetch, self._refetch_s, self._max_age_s = fetch, refetch_s, max_age_s
        self._key: str | None = None
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()

    def _held(self) -> str | None:
        return self._key if time.monotonic() - self._fetched_at < self._max_age_s else None

    async def verify(self, signed: Signed, body: bytes) -> bool:
        key = self._held()
        if key is not None and matches(key, signed, body):
            return True
        async with self._lock:
            held = self._held()
            if held is not None and held != key:
                return matches(held, signed, body)  # another request fetched it meanwhile
            if held is not None and time.monotonic() - self._fetched_at < self._refetch_s:
                return False
            self._fetched_at = time.monotonic()
            try:
                self._key = await asyncio.to_thread(self._fetch)
            except ProviderError as exc:
                self._key = None  # the next webhook tries again
                raise TryLater(f"the account's webhook secret could not be fetched ({type(exc).__name__})") from None
            redact([self._key])  # never shown by a log line of this process, whatever logs it
            return matches(self._key, signed, body)


def make_app(settings: Settings, send_collect: SendCollect, metrics: bool = False) -> web.Application:
    if settings.webhook_secret is None or not settings.redis_url:
        raise SettingsError("the webhook server needs EDITPIPE_WEBHOOK_SECRET and REDIS_URL")
    client = WaveSpeedClient(settings.base_url, settings.require_api_key(), timeout_s=settings.request_timeout_s)
    url_secret = settings.webhook_secret.get_secret_value()
    state = State.from_url(settings.redis_url)
    runs, events = state.runs, state.webhook_events
    account = AccountSecret(client.webhook_secret)
    counts = {"received": 0, "collected": 0, "adopted": 0, "refused": 0, "rejected": 0, "unavailable": 0}
    refused_by = {"unsigned": 0, "stale": 0, "bad signature": 0, "replayed": 0}
    pending: Counter[str] = Counter()  # counted here, not yet added to the fleet's metrics

    async def receive(request: web.Request) -> web.Response:
        counts["received"] += 1
        pending["received"] += 1
        body = await request.read()
        try:
            signed = read_headers(request.headers, time.time())
            if not await account.verify(signed, body):
                raise SignatureRefused("bad signature", "the signature is not the account's")
        except SignatureRefused as exc:
            return refused(exc.reason, str(exc))
        except TryLater as exc:
            return unavailable(exc)
        run = checked_run(url_secret, request.query.get("run", ""), request.query.get("token", ""))
        if run is None:
            counts["rejected"] += 1
            pending["refused|bad_token"] += 1
            return web.json_response({"error": "unknown run or bad token"}, status=403)
        try:
            data = json.loads(body)
            data = data.get("data", data)  # the prediction object, bare or in an envelope
            prediction_id, status = str(data.get("id") or ""), str(data.get("status") or "")
        except (ValueError, AttributeError):
            pending["refused|bad_body"] += 1
            return web.json_response({"error": "the body is not a prediction object"}, status=400)
        if not prediction_id:
            pending["refused|bad_body"] += 1
            return web.json_response({"error": "the body names no prediction"}, status=400)
        try:
            begun, token = await asyncio.to_thread(events.begin, signed.event_id, prediction_id)
        except UNAVAILABLE as exc:
            return unavailable(TryLater(f"Redis is not answering ({type(exc).__name__})"))
        if begun is Begun.SEEN:
            return refused("replayed", f"event {signed.event_id} or prediction {prediction_id} was handled before")
        if begun is Begun.BUSY:
            pending["refused|busy"] += 1
            return web.json_response({"error": "this event is being handled; try again later"}, status=409)
        with run_context(*run, prediction_id):  # the lines below are about this run
            try:
                outcome = await handle(*run, prediction_id, status)
                await asyncio.to_thread(events.done, signed.event_id, prediction_id, outcome is True)
            except TryLater as exc:
                await release(signed.event_id, prediction_id, token)
                return unavailable(exc)
            except UNAVAILABLE as exc:
                await release(signed.event_id, prediction_id, token)
                return unavailable(TryLater(f"Redis is not answering ({type(exc).__name__})"))
        return web.json_response({"accepted": outcome is not False})

    async def handle(job_id: str, index: int, prediction_id: str, status: str) -> bool | None:
        """Act on one genuine, new event: True when its run's collect was sent, None when
        there is nothing to do, False when the prediction is not the run's. Blocking calls
        run off the event loop; Redis and the broker ride out an outage (the state layer's
        RIDE_OUT_S, the app's publish retries); past that the provider is told to try later
        (``TryLater``), and the poll collects the run anyway."""
        try:
            known = await asyncio.to_thread(runs.prediction_of, job_id, index)
        except UNAVAILABLE as exc:
            raise TryLater(f"Redis is not answering ({type(exc).__name__})") from None
        if known != prediction_id:
            # Not the run's recorded prediction. When the run's submit answer was lost (it is
            # looking for it), this is its prediction: only that run's submit gave the provider
            # this URL, whose run token is ours and whose body the account signed
            # (``adoption.settle_by_callback``). Otherwise the poll settles the run.
            try:
                adopted = known is None and await asyncio.to_thread(
                    settle_by_callback, state, job_id, index, prediction_id)
            except UNAVAILABLE as exc:
                raise TryLater(f"Redis is not answering ({type(exc).__name__})") from None
            if not adopted:
                return False
            counts["adopted"] += 1
            log.info("run %s of %s: its lost submit answer settled by the provider's callback (prediction %s)",
                     index, job_id, prediction_id)
        if status != TERMINAL_OK:
            return None  # a failure is read by the run's poll, which judges its code
        try:
            prediction = await asyncio.to_thread(client.result, prediction_id)
        except ProviderError as exc:
            raise TryLater(f"the provider's answer for prediction {prediction_id} could not be read "
                           f"({type(exc).__name__})") from None
        if not prediction.completed:
            return None  # the provider does not say so (yet): its own webhook, or the poll, collects it
        try:
            await asyncio.to_thread(send_collect, job_id, index, prediction.id, prediction.outputs, prediction.nsfw)
        except Exception as exc:  # noqa: BLE001 - the broker's errors are kombu's; the poll is the fallback
            raise TryLater(f"the collect task could not be sent ({type(exc).__name__})") from None
        counts["collected"] += 1
        pending["collected"] += 1
        return True

    async def release(event_id: str, prediction_id: str, token: str) -> None:
        """Unmark an event that was not handled, so the provider's retry of it is new. The
        answer does not wait on a Redis that is away: the drop goes on in its thread (riding
        the outage out), and the mark lapses by itself anyway (``HANDLING_S``)."""
        def drop() -> None:
            try:
                events.drop(event_id, prediction_id, token)
            except UNAVAILABLE:
                pass

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(drop), RELEASE_WAIT_S)

    def refused(reason: str, detail: str) -> web.Response:
        counts["refused"] += 1
        refused_by[reason] += 1
        pending["refused|" + reason.replace(" ", "_")] += 1
        log.info("%s", detail)
        return web.json_response({"error": f"webhook refused: {reason}"}, status=401)

    def unavailable(exc: TryLater) -> web.Response:
        counts["unavailable"] += 1
        pending["refused|unavailable"] += 1
        log.warning("webhook not taken: %s; the provider may send it again, and the poll collects it", exc)
        return web.json_response({"error": f"{exc}; try again later"}, status=503)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({**counts, "refused_by": refused_by})

    async def close_client(_: web.Application) -> None:
        client.close()

    async def flush_counts() -> None:
        if not pending:
            return
        taken = dict(pending)
        pending.clear()
        try:
            await asyncio.to_thread(state.metrics.count_webhooks, taken)
        except UNAVAILABLE:
            pending.update(taken)  # added at a later flush, once Redis answers

    async def counting(_: web.Application) -> AsyncIterator[None]:
        async def every_second() -> None:
            while True:
                await asyncio.sleep(COUNTS_FLUSH_S)
                await flush_counts()

        task = asyncio.create_task(every_second())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(TimeoutError):  # a Redis away does not hold the shutdown
            await asyncio.wait_for(flush_counts(), RELEASE_WAIT_S)

    app = web.Application(client_max_size=1024**2)
    app.router.add_post("/webhook", receive)
    app.router.add_get("/stats", stats)
    if metrics:
        registry = fleet_registry(settings)

        async def fleet_metrics(_: web.Request) -> web.Response:
            body = await asyncio.to_thread(exposition, registry)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

        app.router.add_get("/metrics", fleet_metrics)
    app.cleanup_ctx.append(counting)
    app.on_cleanup.append(close_client)
    return app


class WebhookServer:
    """The webhook receiver on a background thread (for tests and the embedded run)."""

    def __init__(self, settings: Settings, send_collect: SendCollect, host: str = "127.0.0.1", port: int = 0,
                 metrics: bool = False):
        self.settings, self.send_collect, self.host, self.port = settings, send_collect, host, port
        self.metrics = metrics
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.base_url = ""

    def start(self) -> "WebhookServer":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(make_app(self.settings, self.send_collect, self.metrics), access_log=None)
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
