"""The provider's webhook signature: how a POST proves it comes from the account's provider.

Every webhook carries ``webhook-id`` (one per event, the same on each retry of it),
``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v3,<hex>``, where hex is
HMAC-SHA256 over ``{id}.{timestamp}.{raw body}`` keyed by the account's secret with its
``whsec_`` prefix removed, used as its UTF-8 text as it is (wavespeed-api.md, "Signed
webhooks"; not base64-decoded as in the Standard Webhooks scheme). Several space-separated
signatures are accepted, any one matching, as a sender may sign with an old and a new key
during a rotation.

Pure: no I/O. The server that fetches the secret, refuses what fails here and remembers the
ids it has seen is ``pipeline.webhooks``. A refusal's reason never carries the key or a
signature.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import EditpipeError

TOLERANCE_S = 300  # the provider's bound on a webhook's age (or lead) against our clock
SCHEME = "v3"
ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER = "webhook-id", "webhook-timestamp", "webhook-signature"


class SignatureRefused(EditpipeError):
    """A webhook that does not prove it is the provider's; ``reason`` is one of ``unsigned``,
    ``stale`` and ``bad signature``."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"webhook refused ({reason}): {detail}")
        self.reason = reason


@dataclass(frozen=True)
class Signed:
    """What a webhook's headers claim: its event id, timestamp and signatures (hex, ``v3`` only)."""

    event_id: str
    timestamp: int
    signatures: tuple[str, ...]


def signature(key: str, event_id: str, timestamp: int, body: bytes) -> str:
    """The header value the provider sends for this event: ``v3,<hex>``."""
    return f"{SCHEME},{_digest(key, event_id, timestamp, body)}"


def _digest(key: str, event_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{event_id}.{timestamp}.".encode() + body
    return hmac.new(key.encode(), signed, hashlib.sha256).hexdigest()


def read_headers(headers: Mapping[str, str], now: float, tolerance_s: int = TOLERANCE_S) -> Signed:
    """The signature headers of a webhook whose timestamp is within ``tolerance_s`` of ``now``.

    Raises ``SignatureRefused``: ``unsigned`` when a header is missing or malformed (or no
    ``v3`` signature is among them), ``stale`` when the timestamp is too far from ``now``.
    ``headers`` is looked up by the lower-case names (aiohttp's and httpx's are case-blind).
    """
    event_id = (headers.get(ID_HEADER) or "").strip()
    raw_ts = (headers.get(TIMESTAMP_HEADER) or "").strip()
    raw_sigs = headers.get(SIGNATURE_HEADER) or ""
    if not event_id or not raw_ts or not raw_sigs.strip():
        raise SignatureRefused("unsigned", "the webhook-id, webhook-timestamp and webhook-signature headers are required")
    if not raw_ts.isdigit():
        raise SignatureRefused("unsigned", "webhook-timestamp is not Unix seconds")
    signatures = tuple(
        value for scheme, _, value in (part.partition(",") for part in raw_sigs.split()) if scheme == SCHEME and value
    )
    if not signatures:
        raise SignatureRefused("unsigned", f"no {SCHEME} signature in webhook-signature")
    timestamp = int(raw_ts)
    if abs(now - timestamp) > tolerance_s:
        raise SignatureRefused("stale", f"webhook-timestamp is {now - timestamp:.0f} s from now (at most {tolerance_s} s)")
    return Signed(event_id, timestamp, signatures)


def matches(key: str, signed: Signed, body: bytes) -> bool:
    """Whether one of the webhook's signatures is the one ``key`` makes over ``body``."""
    expected = _digest(key, signed.event_id, signed.timestamp, body)
    return any(hmac.compare_digest(expected.encode(), given.lower().encode(errors="replace"))
               for given in signed.signatures)
