"""The review page's server (``editpipe review JOB``): a local page on which people approve,
reject and regenerate a finished job's runs.

The page (``report.review_page``) reads the job's cards and decisions from ``GET api/state``
and polls it, so decisions taken elsewhere (another reviewer's page on another machine, the
command line) show up without a reload: every decision is a line of the job's
``review.jsonl`` in storage (``pipeline.review``), the one record every page reads. It
works the same on S3 and on a local output root; pictures are handed out by the server
(``GET media/<key>``), and only the storage keys the cards name.

A change (``POST api/decisions``, ``POST api/regenerate``) is taken only when all of these
hold, in this order, and otherwise changes nothing:

1. its ``Host`` is this server's own address (a page another site loads through a DNS name
   pointed at 127.0.0.1 is refused: DNS rebinding); else 403;
2. its ``Origin`` (or, without one, its ``Referer``) is this server's own; else 403: a form
   posted from another site's page carries that site's origin;
3. it carries the page's CSRF token (a random one per server, written in the page) in
   ``X-CSRF-Token``; else 403. Another origin cannot read the page to learn it;
4. its body is JSON of the expected form (``run_keys``, ``decision``, ``reason``); else 400;
5. every run it names is one of the job's (else 404) and has an output (else 409), checked
   for the whole request before anything is written (``review.make_decisions``).

Regenerating needs the workers' Redis (the new runs are paid and run by them): without it
the server answers 503 and records nothing. An interface (layer 5): what enqueues runs is
passed in by the CLI, so the server imports nothing of ``workers``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from aiohttp import web

from .errors import EditpipeError, ReviewError
from .regenerate import EnqueueRuns, regenerate
from .report.review_page import render_review_page
from .report.review_sheet import ReviewSheet, load_sheet
from .review import append_decisions, make_decisions, read_decisions
from .state import UNAVAILABLE, State
from .storage import Storage, content_type_for

log = logging.getLogger(__name__)

MAX_RUN_KEYS = 10_000  # run keys one request may name
STORAGE_SHEET_S = 10.0  # without Redis, the cards are read from storage again after this long
SAFE = frozenset({"GET", "HEAD", "OPTIONS"})


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


class ReviewApp:
    """The page's routes over one job. ``hosts``: the ``host:port`` names this server answers
    to (set once it is bound); ``enqueue_runs`` with ``state``: regenerating is possible."""

    def __init__(self, storage: Storage, job_id: str, *, reviewer: str, state: State | None = None,
                 enqueue_runs: EnqueueRuns | None = None, csrf_token: str | None = None):
        self.storage, self.job_id, self.reviewer = storage, job_id, reviewer
        self.state, self.enqueue_runs = state, enqueue_runs
        self.csrf_token = csrf_token or secrets.token_urlsafe(32)
        self.hosts: set[str] = set()
        self._sheet: ReviewSheet | None = None
        self._sheet_json = b""  # the sheet's part of api/state, made once per sheet read
        self._sheet_tag = b""
        self._version: object = None
        self._lock = asyncio.Lock()

    # reading
    def _current_version(self) -> object:
        if self.state is not None and self.state.jobs.known(self.job_id):
            return tuple(self.state.jobs.fields(self.job_id, "total", "finished", "status", "finished_at"))
        return int(time.monotonic() // STORAGE_SHEET_S)

    async def sheet(self) -> ReviewSheet:
        """The job's cards, read again when the job changed (Redis's counters say so) or,
        without Redis, every ``STORAGE_SHEET_S``."""
        async with self._lock:
            version = await asyncio.to_thread(self._current_version)
            if self._sheet is None or version != self._version:
                self._sheet = await asyncio.to_thread(load_sheet, self.storage, self.job_id, self.state)
                self._sheet_json = await asyncio.to_thread(_dumps, {"job": self._sheet.job, "runs": self._sheet.runs})
                self._sheet_tag = hashlib.sha256(self._sheet_json).digest()
                self._version = version
            return self._sheet

    def forget_sheet(self) -> None:
        self._version = None

    # the checks every request passes
    @web.middleware
    async def guard(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.host not in self.hosts:
            return _error(403, f"this page is served as {sorted(self.hosts)[0] if self.hosts else 'localhost'}, "
                               f"not {request.host!r}")
        if request.method not in SAFE:
            origin = request.headers.get("Origin") or _origin_of(request.headers.get("Referer", ""))
            if origin not in {f"http://{host}" for host in self.hosts}:
                return _error(403, f"a change must come from this page, not from {origin or 'an unnamed origin'}")
            token = request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(token.encode(), self.csrf_token.encode()):
                return _error(403, "this page's CSRF token is missing or wrong: reload the page")
        try:
            return await handler(request)
        except ReviewError as exc:
            return _error(exc.http_status, str(exc))
        except UNAVAILABLE as exc:
            return _error(503, f"Redis is not answering ({type(exc).__name__}); nothing was changed")

    async def page(self, _: web.Request) -> web.Response:
        sheet = await self.sheet()
        text = render_review_page(self.job_id, str(sheet.job.get("name") or self.job_id), self.csrf_token,
                                  self.reviewer)
        return web.Response(text=text, content_type="text/html", headers={"Cache-Control": "no-store"})

    async def api_state(self, request: web.Request) -> web.Response:
        """``{"job", "runs", "decisions"}``; its ETag changes with either part, so an unchanged
        poll is answered 304 (the cards' JSON is made once per read of the sheet)."""
        await self.sheet()
        sheet_json, sheet_tag = self._sheet_json, self._sheet_tag
        decisions = await asyncio.to_thread(read_decisions, self.storage, self.job_id)
        decisions_json = _dumps({key: {**d.to_dict(), "state": d.state} for key, d in decisions.items()})
        body = sheet_json[:-1] + b',"decisions":' + decisions_json + b"}"
        etag = '"' + hashlib.sha256(sheet_tag + decisions_json).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=body, content_type="application/json", headers=headers)

    async def media(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        sheet = await self.sheet()
        if key not in sheet.media:
            return _error(404, f"{key!r} is not a picture of job {self.job_id}")
        try:
            data = await asyncio.to_thread(self.storage.get_bytes, key)
        except FileNotFoundError:
            return _error(404, f"{key!r} is not in storage")
        return web.Response(body=data, content_type=content_type_for(key),
                            headers={"Cache-Control": "private, max-age=300"})

    # changing
    async def _body(self, request: web.Request) -> tuple[dict, list[str], str]:
        if request.content_type != "application/json":
            raise ReviewError("send the request as JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except ValueError:
            raise ReviewError("the body is not JSON") from None
        keys = body.get("run_keys") if isinstance(body, dict) else None
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) for k in keys):
            raise ReviewError("run_keys must be a list of one or more run keys")
        if len(keys) > MAX_RUN_KEYS:
            raise ReviewError(f"at most {MAX_RUN_KEYS} runs a request")
        reason = body.get("reason", "")
        if not isinstance(reason, str):
            raise ReviewError("reason must be text")
        return body, list(dict.fromkeys(keys)), reason

    async def api_decisions(self, request: web.Request) -> web.Response:
        body, keys, reason = await self._body(request)
        verdict = body.get("decision")
        if verdict not in ("approve", "reject"):
            raise ReviewError("decision must be approve or reject (regenerate: POST api/regenerate)")
        sheet = await self.sheet()
        decisions = make_decisions(sheet.results, self.job_id, [(key, verdict) for key in keys], reason=reason,
                                   reviewer=self.reviewer)
        await asyncio.to_thread(append_decisions, self.storage, self.job_id, decisions)
        log.info("%s: %s %d run(s)", self.reviewer, verdict, len(decisions))
        done = {"approve": "approved", "reject": "rejected"}[verdict]
        return web.json_response({"decided": len(decisions), "message": f"{done} {len(decisions)} run(s)"})

    async def api_regenerate(self, request: web.Request) -> web.Response:
        _, keys, reason = await self._body(request)
        if self.state is None or self.enqueue_runs is None:
            return _error(503, "regenerating pays for new runs through the workers: start the page with REDIS_URL "
                               "set to their Redis (nothing was changed)")
        sheet = await self.sheet()
        decisions = make_decisions(sheet.results, self.job_id, [(key, "regenerate") for key in keys], reason=reason,
                                   reviewer=self.reviewer)
        # The decision first: should the runs not be added now, `editpipe regenerate JOB
        # --rejected` still finds them asked for.
        await asyncio.to_thread(append_decisions, self.storage, self.job_id, decisions)
        try:
            made = await asyncio.to_thread(regenerate, self.state, self.storage, self.job_id,
                                           [d.run_key for d in decisions], self.enqueue_runs)
        except EditpipeError as exc:
            return _error(409, f"{exc} (the regenerate decision is recorded; `editpipe regenerate "
                               f"{self.job_id} --rejected` tries again)")
        self.forget_sheet()
        new = [r for r in made if not r.before]
        return web.json_response({
            "regenerated": [{"source": r.source, "run_key": r.run_key, "index": r.index, "output": r.output,
                             "before": r.before} for r in made],
            "message": f"{len(new)} run(s) regenerating" + (f", {len(made) - len(new)} regenerated before"
                                                            if len(made) > len(new) else ""),
        })

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard], client_max_size=1024**2)
        app.router.add_get("/", self.page)
        app.router.add_get("/api/state", self.api_state)
        app.router.add_get("/media/{key:.+}", self.media)
        app.router.add_post("/api/decisions", self.api_decisions)
        app.router.add_post("/api/regenerate", self.api_regenerate)
        return app


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), default=str).encode()


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme and parts.netloc else ""


def served_hosts(host: str, port: int) -> set[str]:
    """The ``Host`` names a server bound to ``host``:``port`` answers to: the loopback's two
    usual names too when it listens there (or everywhere)."""
    names = {f"{host}:{port}"}
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::1"):
        names |= {f"127.0.0.1:{port}", f"localhost:{port}"}
    if host in ("0.0.0.0", "::"):  # every interface: this machine's own names too
        names |= {f"{socket.gethostname()}:{port}", f"{socket.getfqdn()}:{port}"}
    return names


class ReviewServer:
    """The review page on a background thread: ``start()`` binds (port 0: a free one) and sets
    ``url``; ``stop()`` ends it."""

    def __init__(self, review: ReviewApp, host: str = "127.0.0.1", port: int = 0):
        self.review, self.host, self.port = review, host, port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="review-server")
        self._runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> ReviewServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.review.app(), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        port = self._runner.addresses[0][1]
        self.review.hosts = served_hosts(self.host, port)
        shown = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        self.url = f"http://{shown}:{port}/"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> ReviewServer:
        return self if self.url else self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
