"""The account endpoints: the recent predictions list and the billing records search.

As wavespeed-api.md ("Account endpoints") documents them, with the same bearer key as every
``/api/v3`` route:

- ``POST /api/v3/predictions`` ``{page, page_size, model, status, created_after,
  created_before}``: every prediction the account created, newest first. ``page`` and
  ``page_size`` are required (``page_size`` 1 to 100). ``model`` matches the model path
  (``openai/gpt-image-2/edit``) or its spec's name; ``status`` matches exactly;
  ``created_after`` / ``created_before`` are ISO 8601 times, both bounds inclusive, compared
  at the millisecond precision ``created_at`` is written with. Like the provider, only the
  past 7 days are listed (nothing in a simulator's life is that old, but the rule holds).
- ``POST /api/v3/billings/search`` ``{billing_type, prediction_uuids, sort, start_time,
  end_time, page, page_size}``: the deductions, one per completed prediction, written when it
  completed; failed and cancelled predictions have none. ``start_time`` / ``end_time`` are
  milliseconds since the epoch (a string or a number), both inclusive; ``sort`` is
  ``created_at ASC`` or ``created_at DESC`` (the default); ``page`` defaults to 1 and
  ``page_size`` to 10 (1 to 100). A ``billing_type`` other than ``deduct`` finds nothing:
  the simulator keeps no top-ups.

Both answer ``data = {"page", "total", "items"}``; a malformed filter is a 400 naming it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from ..modelspec import ModelSpec
from .engine import Engine
from .replies import ENGINE, auth_error, envelope, error, json_body
from .state import Billing, Prediction, parse_stamp
from .submission import BadRequest, find_spec

MAX_PAGE_SIZE = 100
BILLING_PAGE_SIZE = 10
RETENTION = timedelta(days=7)
SORTS = {"created_at ASC": False, "created_at DESC": True}  # sort -> newest first?


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body


def _whole(body: dict[str, Any], name: str, default: int | None, low: int, high: int | None) -> int:
    value = body.get(name, default)
    if value is None:
        raise BadRequest(f"{name} is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"{low} to {high}" if high is not None else f"at least {low}"
        raise BadRequest(f"{name} must be a whole number {bounds}, got {value!r}")
    return value


def _text(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be text, got {value!r}")
    return value


def _iso(body: dict[str, Any], name: str) -> datetime | None:
    value = _text(body, name)
    if value is None:
        return None
    try:
        return parse_stamp(value)
    except ValueError:
        raise BadRequest(f"{name} must be an ISO 8601 time, got {value!r}") from None


def _epoch_ms(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise BadRequest(f"{name} must be milliseconds since the epoch, got {value!r}")


def _page(items: Sequence[Any], page: int, page_size: int) -> dict[str, Any]:
    start = (page - 1) * page_size
    return {"page": page, "total": len(items), "items": [item.data() for item in items[start:start + page_size]]}


def _model_matches(specs: Mapping[str, ModelSpec], wanted: str | None) -> Callable[[str], bool]:
    if wanted is None:
        return lambda model: True
    spec = find_spec(specs, wanted)
    names = {wanted} | ({spec.name, spec.endpoint.removeprefix("/api/v3/")} if spec else set())
    return lambda model: model in names


def list_predictions(engine: Engine, body: Any) -> dict[str, Any]:
    """The ``data`` of a recent-predictions answer; raises ``BadRequest``."""
    body = _object(body)
    page = _whole(body, "page", None, 1, None)
    page_size = _whole(body, "page_size", None, 1, MAX_PAGE_SIZE)
    status = _text(body, "status")
    after, before = _iso(body, "created_after"), _iso(body, "created_before")
    model_ok = _model_matches(engine.specs, _text(body, "model"))
    oldest = datetime.now(UTC) - RETENTION

    def wanted(pred: Prediction) -> bool:
        created = parse_stamp(pred.created_at)
        return (
            created >= oldest
            and model_ok(pred.model)
            and (status is None or pred.status == status)
            and (after is None or created >= after)
            and (before is None or created <= before)
        )

    # Creation order is the dict's order, so reversing it is newest first, ties included.
    found = [pred for pred in reversed(engine.state.predictions.values()) if wanted(pred)]
    return _page(found, page, page_size)


def search_billings(engine: Engine, body: Any) -> dict[str, Any]:
    """The ``data`` of a billing-records answer; raises ``BadRequest``."""
    body = _object(body)
    page = _whole(body, "page", 1, 1, None)
    page_size = _whole(body, "page_size", BILLING_PAGE_SIZE, 1, MAX_PAGE_SIZE)
    billing_type = _text(body, "billing_type") or "deduct"
    sort = _text(body, "sort") or "created_at DESC"
    if sort not in SORTS:
        raise BadRequest(f"sort must be one of {', '.join(SORTS)}, got {sort!r}")
    ids = body.get("prediction_uuids")
    if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
        raise BadRequest("prediction_uuids must be a list of prediction ids")
    wanted_ids = set(ids) if ids else None
    start, end = _epoch_ms(body, "start_time"), _epoch_ms(body, "end_time")

    def wanted(record: Billing) -> bool:
        ms = record.created_ms
        return (
            (wanted_ids is None or record.prediction.id in wanted_ids)
            and (start is None or ms >= start)
            and (end is None or ms <= end)
        )

    records = engine.state.billings if billing_type == "deduct" else []
    found = [record for record in records if wanted(record)]
    if SORTS[sort]:
        found.reverse()
    return _page(found, page, page_size)


async def predictions(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.state.counters.prediction_listings += 1
    return await _answer(request, engine, list_predictions)


async def billings(request: web.Request) -> web.Response:
    engine = request.app[ENGINE]
    engine.state.counters.billing_searches += 1
    return await _answer(request, engine, search_billings)


async def _answer(request: web.Request, engine: Engine,
                  handler: Callable[[Engine, Any], dict[str, Any]]) -> web.Response:
    if (denied := auth_error(request, engine)) is not None:
        return denied
    try:
        data = handler(engine, await json_body(request))
    except BadRequest as exc:
        engine.state.counters.count_400 += 1
        return error(400, str(exc))
    return envelope(data)
