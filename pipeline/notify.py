"""Notify: POST a finished job's summary to the webhook its schedule names (and a budget
alert, ``pipeline.alerts``, to the same kind of webhook).

A notification is a courtesy, never part of the job: a webhook that is down, slow or
wrong is retried a few times, then logged and given up on. Nothing here raises, and no log
line carries the URL's path or query (webhook URLs often embed their secret token) nor the
response body; only the host and the HTTP status are logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from urllib.parse import urlsplit

import httpx
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

log = logging.getLogger(__name__)

TIMEOUT_S = 10.0
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


class _Retryable(Exception):
    """The webhook answered with a status worth trying again (5xx, 429)."""

    def __init__(self, status: int):
        super().__init__(f"HTTP {status}")
        self.status = status


def safe_target(url: str) -> str:
    """The URL without path, query or credentials: what a log line may show."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}" + (f":{parts.port}" if parts.port else "") + "/…"


def notify(url: str, summary: dict, *, attempts: int = 4, initial_wait_s: float = 1.0,
           timeout_s: float = TIMEOUT_S, headers: Mapping[str, str] | None = None) -> bool:
    """POST ``summary`` as JSON to ``url`` (with ``headers`` added); True once the webhook
    answered 2xx.

    Transport errors, timeouts, 5xx and 429 are retried up to ``attempts`` tries in all,
    waiting ``initial_wait_s`` × 2ⁿ (capped at 30 s) plus up to ``initial_wait_s`` of random
    jitter between tries, so that many jobs finishing together do not retry in step. Any
    other answer (a 4xx) is final. Never raises.
    """
    target = safe_target(url)
    try:
        body = json.dumps(summary, default=str).encode()
    except (TypeError, ValueError) as exc:
        log.error("notify %s: the summary is not JSON (%s); nothing was sent", target, type(exc).__name__)
        return False
    retrying = Retrying(
        stop=stop_after_attempt(max(1, attempts)),
        wait=wait_exponential(multiplier=initial_wait_s, max=30.0) + wait_random(0, initial_wait_s),
        retry=retry_if_exception_type((httpx.TransportError, _Retryable)),
        before_sleep=lambda state: log.warning(
            "notify %s: try %d failed (%s); retrying",
            target, state.attempt_number, _describe(state.outcome.exception()),
        ),
    )
    try:
        with httpx.Client(timeout=timeout_s, follow_redirects=False) as client:
            status = retrying(_post, client, url, body, headers or {})
    except RetryError as exc:
        log.error("notify %s: gave up after %d tries (%s)", target, exc.last_attempt.attempt_number,
                  _describe(exc.last_attempt.exception()))
        return False
    except Exception as exc:  # noqa: BLE001 - a notification must never fail the job
        log.error("notify %s: not sent (%s)", target, _describe(exc))
        return False
    if 200 <= status < 300:
        log.info("notify %s: delivered (HTTP %d)", target, status)
        return True
    log.error("notify %s: the webhook refused the summary (HTTP %d); not retried", target, status)
    return False


def _post(client: httpx.Client, url: str, body: bytes, headers: Mapping[str, str]) -> int:
    response = client.post(url, content=body, headers={"Content-Type": "application/json", **headers})
    if response.status_code in RETRY_STATUSES:
        raise _Retryable(response.status_code)
    return response.status_code


def _describe(exc: BaseException | None) -> str:
    # The exception's class, not its text: httpx puts the full URL in some messages.
    if isinstance(exc, _Retryable):
        return str(exc)
    return type(exc).__name__ if exc is not None else "unknown"
