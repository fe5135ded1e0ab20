"""What every ``/api/v3`` handler shares: the engine's app key, the answer envelope, the
bearer-key check and the JSON body reader. Kept apart from ``app.py`` so that handler modules
(``account.py``) and the route table can both import it without a cycle."""

from __future__ import annotations

import hmac
import json
from typing import Any

from aiohttp import web

from .engine import Engine
from .submission import BadRequest

ENGINE = web.AppKey("engine", Engine)


def envelope(data: Any, *, message: str = "success") -> web.Response:
    return web.json_response({"code": 200, "message": message, "data": data})


def error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"code": status, "message": message, "data": None}, status=status, headers=headers)


def auth_error(request: web.Request, engine: Engine) -> web.Response | None:
    """A 401 if the bearer key is missing or wrong; the answer never repeats the key."""
    scheme, _, key = request.headers.get("Authorization", "").partition(" ")
    key = key.strip()
    expected = engine.cfg.api_key
    if scheme.lower() != "bearer" or not key:
        message = "missing API key: send Authorization: Bearer <key>"
    elif expected is not None and not hmac.compare_digest(key.encode(), expected.encode()):
        message = "invalid API key"
    else:
        return None
    engine.state.counters.count_401 += 1
    return error(401, message)


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest("request body is not valid JSON") from None
