"""Signed webhooks, as the provider sends them: one event per finished prediction, signed with
the account's secret and sent again until the receiver answers 2xx.

Each POST carries ``webhook-id`` (one per event, the same on every attempt),
``webhook-timestamp`` (Unix seconds, fresh per attempt) and ``webhook-signature:
v3,<hex>``: HMAC-SHA256 over ``{id}.{timestamp}.{raw body}`` keyed by ``cfg.webhook_secret``
with its ``whsec_`` prefix removed, the rest used as its UTF-8 text (not base64-decoded).
The body is the prediction's ``data`` object, as the submit and result answers carry it.

A non-2xx answer or a connection error is tried again, ``cfg.webhook_attempts`` times in
all, ``cfg.webhook_retry_s`` apart at first and doubling; the counters say what happened
(``webhooks_sent``: events answered 2xx; ``webhooks_retried``: attempts after an event's
first; ``webhooks_refused``: attempts answered non-2xx; ``webhooks_failed``: events given
up on). Written apart from editpipe's own check (``pipeline.webhook_signature``) on
purpose: the simulator is there to judge it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from .config import SimConfig
from .state import Counters

log = logging.getLogger(__name__)


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def signature(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """``v3,<hex>`` for one attempt of one event; ``secret`` is the ``whsec_`` text."""
    key = secret.removeprefix("whsec_").encode()
    return "v3," + hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, event_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, event_id, timestamp, body),
    }


async def deliver(session: aiohttp.ClientSession, url: str, data: dict[str, Any],
                  config: Callable[[], SimConfig], counters: Counters) -> None:
    """Send one event for a finished prediction until it is taken or the attempts run out.

    ``config`` is read at each attempt, so a secret rotated meanwhile signs the next one."""
    body = json.dumps(data).encode()
    event_id = new_event_id()
    attempts = max(1, config().webhook_attempts)
    for attempt in range(attempts):
        if attempt:
            counters.webhooks_retried += 1
            await asyncio.sleep(config().webhook_retry_s * 2 ** (attempt - 1))
        try:
            async with session.post(url, data=body, headers=signed_headers(config().webhook_secret, event_id, body)) as resp:
                await resp.read()
                if 200 <= resp.status < 300:
                    counters.webhooks_sent += 1
                    return
                counters.webhooks_refused += 1
                why = f"HTTP {resp.status}"
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
        log.info("webhook %s for prediction %s not taken (attempt %d of %d): %s",
                 event_id, data["id"], attempt + 1, attempts, why)
    counters.webhooks_failed += 1
