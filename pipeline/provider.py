"""The WaveSpeed v3 client: submit, poll, download, upload, over httpx.

Errors are classified for the caller (see ``errors.py``):
``RateLimited`` (429) and ``ProviderTransient`` (5xx, timeouts, resets) are worth retrying;
``RunRejected`` (400 and other 4xx) is permanent for one run; ``AuthFailed`` (401/403) is
fatal for the whole job. A submit whose request was sent but whose answer was lost raises
``SubmitUnconfirmed``: the provider may have created (and will bill) that prediction.

The API key goes only into the ``Authorization`` header of requests to the configured base
URL; never to output hosts, never into an exception's text.
"""

from __future__ import annotations

import base64
import binascii
import mimetypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx

from .errors import (
    AuthFailed,
    ProviderError,
    ProviderTransient,
    RateLimited,
    RunRejected,
    SubmitUnconfirmed,
)

TERMINAL_OK = "completed"
TERMINAL_FAILED = frozenset({"failed", "cancelled", "timeout", "deleted"})
RUN_KEY_HEADER = "X-Editpipe-Run-Key"


@dataclass(frozen=True)
class Prediction:
    id: str
    status: str
    outputs: list[str] = field(default_factory=list)
    error: str = ""
    model: str = ""
    inference_s: float | None = None  # the provider's own timing of the edit, when it gives one
    code: int | None = None  # a failed prediction's failure code (wavespeed-api.md, "Failure codes")
    created_at: str = ""  # as the provider writes it: 2026-11-23T12:00:00.000Z
    # The provider's flag per output (``has_nsfw_contents``); None when it sent none.
    nsfw: list[bool] | None = None

    @property
    def completed(self) -> bool:
        return self.status == TERMINAL_OK

    @property
    def failed(self) -> bool:
        return self.status in TERMINAL_FAILED

    @property
    def terminal(self) -> bool:
        return self.completed or self.failed

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "Prediction":
        return cls(
            id=str(data.get("id") or ""),
            status=str(data.get("status") or ""),
            outputs=[str(o) for o in data.get("outputs") or []],
            error=str(data.get("error") or ""),
            model=str(data.get("model") or ""),
            inference_s=_inference_s(data.get("timings")),
            code=_code(data.get("code")),
            created_at=str(data.get("created_at") or ""),
            nsfw=_flags(data.get("has_nsfw_contents")),
        )


def _flags(raw: Any) -> list[bool] | None:
    """``has_nsfw_contents`` as a list of booleans; None when it is not a list."""
    return [item is True for item in raw] if isinstance(raw, list) else None


def _code(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return None


@dataclass(frozen=True)
class Page:
    """One page of an account listing: its items and how many there are in all."""

    items: list[Any]
    total: int
    page: int
    page_size: int

    @property
    def last(self) -> bool:
        return self.page * self.page_size >= self.total or not self.items


@dataclass(frozen=True)
class BillingRecord:
    """One line of the provider's billing records (``POST /api/v3/billings/search``)."""

    uuid: str
    billing_type: str
    price_usd: Decimal
    created_at: str
    prediction_id: str
    prediction_status: str

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> "BillingRecord":
        prediction = data.get("prediction") if isinstance(data.get("prediction"), dict) else {}
        return cls(
            uuid=str(data.get("uuid") or ""),
            billing_type=str(data.get("billing_type") or ""),
            # Through its string form, never float arithmetic: 0.1 stays 0.1.
            price_usd=Decimal(str(data.get("price") or 0)),
            created_at=str(data.get("created_at") or ""),
            prediction_id=str(prediction.get("uuid") or ""),
            prediction_status=str(prediction.get("status") or ""),
        )


def _inference_s(timings: Any) -> float | None:
    ms = timings.get("inference") if isinstance(timings, dict) else None
    return ms / 1000 if isinstance(ms, (int, float)) and not isinstance(ms, bool) and ms >= 0 else None


def _retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _provider_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(body, dict):
        data = body.get("data") if isinstance(body.get("data"), dict) else {}
        return str(body.get("message") or data.get("error") or response.reason_phrase)
    return response.reason_phrase


def raise_for_status(response: httpx.Response, what: str) -> None:
    """Turn an HTTP error answer into the matching ``ProviderError``."""
    status = response.status_code
    if status < 400:
        return
    message = f"{what}: HTTP {status}: {_provider_message(response)}"
    if status == 429:
        raise RateLimited(message, status=status, retry_after=_retry_after(response))
    if status in (401, 403):
        raise AuthFailed(
            f"{what}: the provider rejected the API key (HTTP {status}); "
            "check WAVESPEED_API_KEY",
            status=status,
        )
    if status >= 500 or status == 408:
        raise ProviderTransient(message, status=status, retry_after=_retry_after(response))
    raise RunRejected(message, status=status)


class WaveSpeedClient:
    """A synchronous httpx client for one API key and base URL.

    Synchronous on purpose: a worker makes one call at a time, and httpx's sync client costs
    less CPU per request than its async one.
    """

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 60.0):
        self.base_url = base_url.rstrip("/")
        self._api_host = urlparse(self.base_url).netloc
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=httpx.Timeout(timeout_s, connect=10.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
        )
        # Output and reference hosts get no Authorization header.
        self._public = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0), follow_redirects=True)

    def close(self) -> None:
        self._http.close()
        self._public.close()

    def __enter__(self) -> "WaveSpeedClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _envelope(self, response: httpx.Response, what: str) -> dict[str, Any]:
        raise_for_status(response, what)
        try:
            body = response.json()
        except ValueError:
            raise ProviderTransient(f"{what}: the provider's answer is not JSON", status=response.status_code) from None
        code = body.get("code", 200) if isinstance(body, dict) else 200
        if isinstance(code, int) and code >= 400 and code != 5004:
            raise_for_status(httpx.Response(code, json=body), what)
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, dict):
            raise ProviderTransient(f"{what}: the provider's answer has no data", status=response.status_code)
        return data

    def submit(self, endpoint: str, payload: dict[str, Any], *, run_key: str | None = None,
               webhook: str | None = None) -> Prediction:
        """Create a prediction. Never retried here: the caller decides, since a lost answer
        may still be billed. ``webhook``: where the provider POSTs it when it is done."""
        headers = {RUN_KEY_HEADER: run_key} if run_key else {}
        params = {"webhook": webhook} if webhook else None
        try:
            response = self._http.post(endpoint, json=payload, headers=headers, params=params)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            # Nothing reached the provider: plainly transient.
            raise ProviderTransient(f"submit: cannot reach the provider ({type(exc).__name__})") from None
        except httpx.TransportError as exc:
            raise SubmitUnconfirmed(
                f"submit: the request was sent but its answer was lost ({type(exc).__name__})"
            ) from None
        prediction = Prediction.from_data(self._envelope(response, "submit"))
        if not prediction.id:
            raise ProviderTransient("submit: the provider's answer has no prediction id")
        return prediction

    def result(self, prediction_id: str) -> Prediction:
        try:
            response = self._http.get(f"/api/v3/predictions/{prediction_id}/result")
        except httpx.TransportError as exc:
            raise ProviderTransient(f"poll: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise RunRejected(f"poll: prediction {prediction_id} is unknown to the provider", status=404)
        return Prediction.from_data(self._envelope(response, "poll"))

    def download(self, output: str) -> bytes:
        """An output's bytes, whether the provider gave a URL or base64 text."""
        if output.startswith(("http://", "https://")):
            client = self._http if urlparse(output).netloc == self._api_host else self._public
            try:
                response = client.get(output)
            except httpx.TransportError as exc:
                raise ProviderTransient(f"download: {type(exc).__name__}") from None
            raise_for_status(response, "download")
            return response.content
        text = output.split(",", 1)[1] if output.startswith("data:") else output
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ProviderError("download: the output is neither a URL nor base64") from None

    def upload(self, path: Path) -> str:
        """Upload a local reference image; returns the URL to pass in ``images``.

        The ticket-and-PUT flow the provider's SDK uses, and the older binary endpoint when
        the ticket endpoint is not there.
        """
        data = path.read_bytes()
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        try:
            ticket = self._http.post(
                "/api/v3/media/uploads",
                json={"filename": path.name, "size": len(data), "content_type": content_type},
            )
            if ticket.status_code in (404, 405):
                return self._upload_binary(path.name, data, content_type)
            info = self._envelope(ticket, "upload")
            upload = info.get("upload") or {}
            put = self._public.request(
                upload.get("method", "PUT"), upload["url"], content=data, headers=upload.get("headers") or {}
            )
            raise_for_status(put, "upload")
            return str(info["download_url"])
        except httpx.TransportError as exc:
            raise ProviderTransient(f"upload: {type(exc).__name__}") from None
        except KeyError as exc:
            raise ProviderTransient(f"upload: the provider's ticket lacks {exc}") from None

    def _upload_binary(self, name: str, data: bytes, content_type: str) -> str:
        response = self._http.post("/api/v3/media/upload/binary", files={"file": (name, data, content_type)})
        info = self._envelope(response, "upload")
        return str(info["download_url"])

    # Account endpoints (wavespeed-api.md, "Account endpoints").

    def _account(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, json=body)
        except httpx.TransportError as exc:
            raise ProviderTransient(f"{what}: {type(exc).__name__}") from None
        return self._envelope(response, what)

    def recent_predictions(self, *, model: str, created_after: str, created_before: str,
                           status: str | None = None, page: int = 1, page_size: int = 100) -> Page:
        """One page of the account's predictions of ``model`` created in the window (ISO 8601
        times), newest first; the provider keeps 7 days. Items carry no input."""
        body: dict[str, Any] = {"page": page, "page_size": page_size, "model": model,
                                "created_after": created_after, "created_before": created_before}
        if status:
            body["status"] = status
        data = self._account("POST", "/api/v3/predictions", "recent predictions", body)
        items = [Prediction.from_data(item) for item in data.get("items") or [] if isinstance(item, dict)]
        return Page(items=items, total=int(data.get("total") or 0), page=page, page_size=page_size)

    def iter_recent_predictions(self, **window: Any) -> Iterator[Prediction]:
        """Every prediction ``recent_predictions`` finds, page after page."""
        return _every_page(self.recent_predictions, window)

    def billings(self, *, prediction_ids: list[str] | None = None, start_ms: int | None = None,
                 end_ms: int | None = None, page: int = 1, page_size: int = 100,
                 sort: str = "created_at ASC") -> Page:
        """One page of the account's deductions, filtered by prediction ids and/or a time
        window (milliseconds since the epoch)."""
        body: dict[str, Any] = {"billing_type": "deduct", "sort": sort, "page": page, "page_size": page_size}
        if prediction_ids:
            body["prediction_uuids"] = list(prediction_ids)
        if start_ms is not None:
            body["start_time"] = str(start_ms)
        if end_ms is not None:
            body["end_time"] = str(end_ms)
        data = self._account("POST", "/api/v3/billings/search", "billing records", body)
        items = [BillingRecord.from_data(item) for item in data.get("items") or [] if isinstance(item, dict)]
        return Page(items=items, total=int(data.get("total") or 0), page=page, page_size=page_size)

    def iter_billings(self, **filters: Any) -> Iterator[BillingRecord]:
        """Every deduction ``billings`` finds, page after page."""
        return _every_page(self.billings, filters)

    def webhook_secret(self) -> str:
        """The key the provider signs webhooks with: its ``whsec_`` secret with the prefix
        removed, used as it is (wavespeed-api.md, "Signed webhooks")."""
        data = self._account("GET", "/api/v3/webhook/secret", "webhook secret")
        secret = str(data.get("secret") or "")
        if not secret:
            raise ProviderError("webhook secret: the provider's answer has no secret")
        return secret.removeprefix("whsec_")


def _every_page(fetch: Callable[..., Page], filters: dict[str, Any]) -> Iterator[Any]:
    """The items of every page ``fetch`` answers for ``filters``, from page 1 to the last."""
    page = 1
    while True:
        found = fetch(page=page, **filters)
        yield from found.items
        if found.last:
            return
        page += 1
