"""What the simulated provider remembers: predictions, limits, billing records and counters.

Everything here is touched from the simulator's one event loop only, and no method awaits,
so "check the limits, then create" is atomic without locks.
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .config import SimConfig
from .faults import Ending
from .images import Rendered
from .limits import StartWindow

ACTIVE = frozenset({"created", "processing"})
NSFW_MARKER = "[sim:nsfw]"
ACCESS_KEY_NAME = "default"  # the name the provider's console gives an account's first key


def utc_stamp(at: datetime | None = None) -> str:
    """``at`` (default now) in UTC as the provider writes it: ``2026-11-23T12:00:00.000Z``."""
    return (at or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_stamp(stamp: str) -> datetime:
    """A ``utc_stamp`` (or any ISO 8601 time; one without a zone is taken as UTC) as an aware datetime."""
    at = datetime.fromisoformat(stamp)
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


@dataclass
class Prediction:
    """One created prediction; ``data()`` is its provider-shaped ``data`` object."""

    id: str
    model: str
    run_key: str
    origin: str
    images: list[str]
    prompt: str
    aspect_ratio: str
    output_format: str
    base64_output: bool
    webhook: str | None
    ending: Ending | None  # how it ends if it is not to complete (``faults``)
    created_mono: float
    created_at: str = field(default_factory=utc_stamp)
    status: str = "created"
    error: str = ""
    code: int | None = None  # a failed prediction's failure code
    outputs: list[str] = field(default_factory=list)
    inference_ms: int | None = None
    billed: bool = False
    cost_usd: Decimal = Decimal("0")
    dropped: bool = False
    output_failures: int = 0  # downloads of its output still to answer 500 (a test's fault)
    polls: int = 0  # result requests for this prediction
    rendered: Rendered | None = field(default=None, repr=False)
    done: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def data(self) -> dict[str, Any]:
        data = {
            "id": self.id,
            "model": self.model,
            "status": self.status,
            "outputs": list(self.outputs),
            "urls": {"get": f"{self.origin}/api/v3/predictions/{self.id}/result"},
            # ``[sim:nsfw]`` in the prompt: the provider flags every output it made.
            "has_nsfw_contents": [NSFW_MARKER in self.prompt] * len(self.outputs),
            "created_at": self.created_at,
            "error": self.error,
            "timings": {} if self.inference_ms is None else {"inference": self.inference_ms},
        }
        if self.code is not None:
            data["code"] = self.code
        return data

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "run_key": self.run_key,
            "model": self.model,
            "status": self.status,
            "billed": self.billed,
            "cost_usd": str(self.cost_usd),
            "created_at": self.created_at,
            "error": self.error,
            "code": self.code,
            "dropped": self.dropped,
            "polls": self.polls,
            "images": list(self.images),
        }


@dataclass(frozen=True)
class Billing:
    """One deduction from the account: written once, when its prediction completes."""

    uuid: str
    prediction: Prediction = field(repr=False)
    price_usd: Decimal
    created: datetime  # UTC, at millisecond precision like every stamp the provider writes

    @property
    def created_ms(self) -> int:
        return int(self.created.timestamp() * 1000)

    def data(self) -> dict[str, Any]:
        """As ``POST /api/v3/billings/search`` lists it; ``price`` a JSON number, as the
        provider sends it (``float`` only to serialise: its repr is the shortest decimal)."""
        stamp = utc_stamp(self.created)
        pred = self.prediction
        return {
            "uuid": self.uuid,
            "billing_type": "deduct",
            "price": float(self.price_usd),
            "created_at": stamp,
            "updated_at": stamp,
            "order": {"uuid": f"order-{self.uuid}", "type": "prediction", "status": "paid",
                      "amount": float(self.price_usd)},
            "prediction": {"uuid": pred.id, "model_uuid": pred.model, "status": pred.status},
            "access_key_name": ACCESS_KEY_NAME,
        }


@dataclass
class Counters:
    """The numbers ``GET /_sim/stats`` reports, apart from those derived from live state."""

    submits: int = 0
    created: int = 0
    completed: int = 0
    failed: int = 0
    billed_count: int = 0
    billed_usd: Decimal = Decimal("0.00")
    peak_concurrency: int = 0
    count_429: int = 0
    count_401: int = 0
    count_400: int = 0
    injected_5xx: int = 0
    injected_output_5xx: int = 0
    dropped_responses: int = 0
    duplicate_submissions: int = 0
    polls: int = 0
    uploads: int = 0
    webhooks_sent: int = 0
    webhooks_retried: int = 0
    webhooks_refused: int = 0
    webhooks_failed: int = 0
    prediction_listings: int = 0  # POST /api/v3/predictions (the account's recent predictions)
    billing_searches: int = 0  # POST /api/v3/billings/search


class SimState:
    """Predictions and account state of one simulated API account.

    Guarantees: a prediction is billed at most once, and only when it completes, and then
    it has exactly one deduction in ``billings`` (failed and cancelled ones have none); rejected
    submits leave no trace but their counters; ``max_starts_60s`` and ``peak_concurrency``
    are exact over everything created since the last reset.
    """

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.predictions: dict[str, Prediction] = {}  # in creation order
        self.billings: list[Billing] = []  # in creation order: one per completed prediction
        self.counters = Counters()
        self.window = StartWindow()
        self.in_flight = 0
        self.run_keys: set[str] = set()
        # (marker, run key) pairs whose one-time fault has already fired.
        self.once_fired: set[tuple[str, str]] = set()

    def chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    def first_time(self, marker: str, run_key: str) -> bool:
        """True the first time ``marker`` is met with ``run_key``, False ever after."""
        if (marker, run_key) in self.once_fired:
            return False
        self.once_fired.add((marker, run_key))
        return True

    def refusal(self, cfg: SimConfig, now: float) -> tuple[str, int] | None:
        """``(message, retry_after_s)`` if one more start would break a limit, else ``None``."""
        per_minute, concurrent = cfg.limits
        if concurrent is not None and self.in_flight >= concurrent:
            return f"too many concurrent tasks (limit {concurrent})", 1
        wait = self.window.retry_after(now, per_minute)
        if wait is not None:
            return f"too many images started per minute (limit {per_minute})", wait
        return None

    def create(self, now: float, **fields: Any) -> Prediction:
        pred = Prediction(id=uuid.uuid4().hex, created_mono=now, **fields)
        self.predictions[pred.id] = pred
        self.window.record(now)
        self.in_flight += 1
        c = self.counters
        c.created += 1
        c.peak_concurrency = max(c.peak_concurrency, self.in_flight)
        if pred.run_key in self.run_keys:
            c.duplicate_submissions += 1
        self.run_keys.add(pred.run_key)
        return pred

    def start_processing(self, pred: Prediction) -> None:
        if pred.status == "created":
            pred.status = "processing"

    def complete(self, pred: Prediction, outputs: list[str], inference_ms: int, price: Decimal) -> None:
        if not self._end(pred, "completed"):
            return
        pred.outputs = outputs
        pred.inference_ms = inference_ms
        pred.billed = True
        pred.cost_usd = price
        self.billings.append(Billing(uuid.uuid4().hex, pred, price, parse_stamp(utc_stamp())))
        c = self.counters
        c.completed += 1
        c.billed_count += 1
        c.billed_usd += price

    def fail(self, pred: Prediction, error: str, code: int | None = None, status: str = "failed") -> None:
        """End ``pred`` without an output, unbilled: ``failed`` with ``code``, or ``status``
        (``timeout``, ``cancelled``, ``deleted``)."""
        if self._end(pred, status):
            pred.error = error
            pred.code = code
            self.counters.failed += 1

    def cancel(self, pred: Prediction, reason: str) -> None:
        if self._end(pred, "cancelled"):
            pred.error = reason

    def _end(self, pred: Prediction, status: str) -> bool:
        if pred.status not in ACTIVE:
            return False
        pred.status = status
        self.in_flight -= 1
        pred.done.set()
        return True

    def stats(self) -> dict[str, Any]:
        out = asdict(self.counters)
        out["billed_usd"] = str(self.counters.billed_usd)
        out["processing"] = self.in_flight
        out["max_starts_60s"] = self.window.max_in_window
        return out
