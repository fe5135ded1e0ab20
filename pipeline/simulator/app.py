"""HTTP face of the simulator: the WaveSpeed v3 routes, file routes and ``/_sim`` controls.

``/api/v3/*`` wants ``Authorization: Bearer <key>`` as the real API does. The ``/_sim/*``
file routes (upload PUT, downloads, outputs) stand in for presigned storage and a CDN, so
they take no key; the other ``/_sim`` routes are for tests and operators.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any, NoReturn

from aiohttp import web

from . import account
from .config import SimConfig
from .engine import Engine
from .faults import planned_ending
from .images import CONTENT_TYPES
from .replies import ENGINE
from .replies import auth_error as _auth_error
from .replies import envelope as _envelope
from .replies import error as _error
from .replies import json_body as _json_body
from .state import Prediction, SimState
from .submission import BadRequest, find_spec, parse_submission
from .uploads import MAX_UPLOAD_BYTES, Upload, download_path

RUN_KEY_HEADER = "X-Editpipe-Run-Key"
SYNC_TIMEOUT_CODE = 5004
SLOW_MARKER_FACTOR = 3
# Multipart framing around a 20 MB file needs a little room above the file limit.
_MAX_BODY = MAX_UPLOAD_BYTES + (1 << 20)


def _origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _run_key(request: web.Request, body: Any) -> str:
    header = request.headers.get(RUN_KEY_HEADER, "").strip()
    if header:
        return header
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _drop_response(request: web.Request) -> NoReturn:
    """Close the connection without answering: the client sees a reset, not a status."""
    if request.transport is not None:
        request.transport.abort()
    # Cancelling the handler is how aiohttp is told there is nothing left to send.
    raise asyncio.CancelledError


async def submit(request: web.Request) -> web.StreamResponse:
    engine = request.app[ENGINE]
    engine.state.counters.submits += 1
    if (denied := _auth_error(request, engine)) is not None:
        return denied
    model = request.match_info["model"]
    webhook = request.query.get("webhook") or None
    try:
        body = await _json_body(request)
        sub = parse_submission(body, find_spec(engine.specs, model), webhook)
        if "[sim:400]" in sub.prompt:
            raise BadRequest("simulated bad request")
    except BadRequest as exc:
        engine.state.counters.count_400 += 1
        return _error(400, str(exc))

    # From here to `create` nothing awaits, so the limit check and the creation are atomic.
    cfg, state = engine.cfg, engine.state
    loop = asyncio.get_running_loop()
    run_key = _run_key(request, body)
    if "[sim:drop-uncreated-once]" in sub.prompt and state.first_time("drop-uncreated-once", run_key):
        # An answer lost before the provider made anything: nothing to find, nothing billed.
        state.counters.dropped_responses += 1
        _drop_response(request)
    if (refused := _refuse_before_creating(state, cfg, sub.prompt, run_key, loop.time())) is not None:
        return refused

    ending = planned_ending(sub.prompt, run_key, state, cfg)
    duration = cfg.latency_s + (state.rng.uniform(-cfg.jitter_s, cfg.jitter_s) if cfg.jitter_s else 0.0)
    if "[sim:slow]" in sub.prompt:
        duration *= SLOW_MARKER_FACTOR
    pred = state.create(
        loop.time(),
        model=model,
        run_key=run_key,
        origin=_origin(request),
        images=sub.images,
        prompt=sub.prompt,
        aspect_ratio=sub.aspect_ratio,
        output_format=sub.output_format,
        base64_output=sub.base64_output,
        webhook=webhook,
        ending=ending,
        output_failures=1 if "[sim:output-500-once]" in sub.prompt else 0,
    )
    engine.launch(pred, max(0.0, duration))

    drop_once = "[sim:drop-once]" in sub.prompt and state.first_time("drop-once", run_key)
    if drop_once or state.chance(cfg.drop_rate):
        pred.dropped = True
        state.counters.dropped_responses += 1
        _drop_response(request)
    if "[sim:500-after-create-once]" in sub.prompt and state.first_time("500-after-create-once", run_key):
        # The provider made (and will bill) the prediction, yet answered 5xx without its id.
        state.counters.injected_5xx += 1
        return _error(500, "simulated server error")
    if state.chance(cfg.slow_rate):
        await asyncio.sleep(cfg.slow_s)
    if sub.sync:
        return await _sync_answer(pred, cfg.sync_timeout_s)
    return _envelope(pred.data())


def _refuse_before_creating(
    state: SimState, cfg: SimConfig, prompt: str, run_key: str, now: float
) -> web.Response | None:
    """An injected 5xx or a 429, if this submit gets one; such a submit creates nothing."""
    if "[sim:500-once]" in prompt and state.first_time("500-once", run_key):
        state.counters.injected_5xx += 1
        return _error(500, "simulated server error")
    if state.chance(cfg.error_5xx_rate):
        state.counters.injected_5xx += 1
        return _error(state.rng.choice((500, 502, 503)), "simulated server error")
    refusal = state.refusal(cfg, now)
    if refusal is not None:
        message, retry_after = refusal
        state.counters.count_429 += 1
        return _error(429, message, headers={"Retry-After": str(retry_after)})
    return None


async def _sync_answer(pred: Prediction, timeout_s: float) -> web.Response:
    try:
        await asyncio.wait_for(pred.done.wait(), timeout_s)
    except TimeoutError:
        # What the provider answers when its own sync wait runs out; the SDK keys on 5004.
        data = pred.data()
        data.update(status="processing", error="Sync mode timed out", code=SYNC_TIMEOUT_CODE)
        return _envelope(data, message="Sync mode timed out")
    return _envelope(pred.data())


async def get_result(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    if (denied := _auth_error(request, engine)) is not None:
        return denied
    engine.state.counters.polls += 1
    pred = engine.state.predictions.get(request.match_info["id"])
    if pred is None:
        return _error(404, "prediction not found")
    pred.polls += 1
    return _envelope(pred.data())


async def webhook_secret(request: web.Request) -> web.Response:
    """The account's webhook signing secret (``whsec_...``); the bearer key is required."""
    engine = request.app[ENGINE]
    if (denied := _auth_error(request, engine)) is not None:
        return denied
    return _envelope({"secret": engine.cfg.webhook_secret})


async def create_upload(request: web.Request) -> web.Response:
    """Upload ticket (the SDK's way): answers where to PUT the bytes and where to GET them."""
    engine = request.app[ENGINE]
    if (denied := _auth_error(request, engine)) is not None:
        return denied
    try:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("request body must be a JSON object")
        filename, size = body.get("filename"), body.get("size")
        content_type = body.get("content_type") or "application/octet-stream"
        if not isinstance(filename, str) or not filename.strip():
            raise BadRequest("filename is required")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise BadRequest("size must be a whole number of bytes")
        if size is not None and size > MAX_UPLOAD_BYTES:
            raise BadRequest("file is larger than the 20 MB limit")
        if not isinstance(content_type, str):
            raise BadRequest("content_type must be text")
    except BadRequest as exc:
        engine.state.counters.count_400 += 1
        return _error(400, str(exc))
    upload = engine.uploads.ticket(filename, content_type, size)
    origin = _origin(request)
    return _envelope(
        {
            "upload": {
                "method": "PUT",
                "url": f"{origin}/_sim/upload/{upload.token}",
                "headers": {"Content-Type": content_type},
            },
            "download_url": origin + download_path(upload),
        }
    )


async def put_upload(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    upload = engine.uploads.get(request.match_info["token"])
    if upload is None:
        return _error(404, "unknown upload URL")
    data = await request.read()
    if len(data) > MAX_UPLOAD_BYTES:
        return _error(413, "file is larger than the 20 MB limit")
    if upload.declared_size is not None and len(data) != upload.declared_size:
        return _error(400, f"expected {upload.declared_size} bytes, got {len(data)}")
    _store(engine.state, upload, data)
    return web.Response(status=200)


async def upload_binary(request: web.Request) -> web.Response:
    """The older single-request upload: multipart form field ``file``."""
    engine = request.app[ENGINE]
    if (denied := _auth_error(request, engine)) is not None:
        return denied
    form = await request.post()
    field = form.get("file")
    if not isinstance(field, web.FileField):
        engine.state.counters.count_400 += 1
        return _error(400, "multipart form field 'file' is required")
    data = field.file.read()
    if not data:
        engine.state.counters.count_400 += 1
        return _error(400, "the uploaded file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        return _error(413, "file is larger than the 20 MB limit")
    upload = engine.uploads.ticket(field.filename or "upload", field.content_type, len(data))
    _store(engine.state, upload, data)
    return _envelope(
        {
            "type": "image",
            "filename": upload.filename,
            "size": len(data),
            "download_url": _origin(request) + download_path(upload),
        }
    )


def _store(state: SimState, upload: Upload, data: bytes) -> None:
    upload.data = data
    state.counters.uploads += 1


async def get_media(request: web.Request) -> web.Response:
    upload = request.app[ENGINE].uploads.get(request.match_info["token"])
    if upload is None or upload.data is None or upload.filename != request.match_info["name"]:
        return _error(404, "no such file")
    # Passed as a header, not content_type=, because a client's type may carry parameters.
    return web.Response(body=upload.data, headers={"Content-Type": upload.content_type})


async def get_output(request: web.Request) -> web.Response:
    pred = request.app[ENGINE].state.predictions.get(request.match_info["id"])
    rendered = pred.rendered if pred is not None else None
    if rendered is None or request.match_info["name"] != f"0.{rendered.ext}":
        return _error(404, "no such output")
    if pred.output_failures > 0:
        pred.output_failures -= 1
        request.app[ENGINE].state.counters.injected_output_5xx += 1
        return _error(500, "simulated server error")
    return web.Response(body=rendered.data, content_type=CONTENT_TYPES[rendered.ext])


async def sim_stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].state.stats())


async def sim_predictions(request: web.Request) -> web.Response:
    preds = request.app[ENGINE].state.predictions.values()
    return web.json_response([p.summary() for p in preds])


async def sim_get_config(request: web.Request) -> web.Response:
    return web.json_response(request.app[ENGINE].cfg.public())


async def sim_set_config(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    try:
        changes = await _json_body(request)
        if not isinstance(changes, dict):
            raise BadRequest("send a JSON object of SimConfig fields")
        cfg = engine.configure(changes)
    except (BadRequest, ValueError, TypeError) as exc:
        return _error(400, str(exc))
    return web.json_response(cfg.public())


async def sim_reset(request: web.Request) -> web.Response:
    await request.app[ENGINE].reset()
    return web.json_response({"reset": True})


def make_app(engine: Engine) -> web.Application:
    app = web.Application(client_max_size=_MAX_BODY)
    app[ENGINE] = engine
    r = app.router
    # Specific /api/v3 routes first: the catch-all model route would match them too.
    r.add_get("/api/v3/webhook/secret", webhook_secret)
    r.add_get("/api/v3/predictions/{id}/result", get_result)
    r.add_post("/api/v3/media/uploads", create_upload)
    r.add_post("/api/v3/media/upload/binary", upload_binary)
    r.add_post("/api/v3/predictions", account.predictions)
    r.add_post("/api/v3/billings/search", account.billings)
    r.add_post("/api/v3/{model:.+}", submit)
    r.add_put("/_sim/upload/{token}", put_upload)
    r.add_get("/_sim/media/{token}/{name}", get_media)
    r.add_get("/_sim/outputs/{id}/{name}", get_output)
    r.add_get("/_sim/stats", sim_stats)
    r.add_get("/_sim/predictions", sim_predictions)
    r.add_get("/_sim/config", sim_get_config)
    r.add_post("/_sim/config", sim_set_config)
    r.add_post("/_sim/reset", sim_reset)
    return app
