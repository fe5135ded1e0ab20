"""What a simulator run looks like: latency, account limits, auth and injected faults.

A ``SimConfig`` is immutable; the running simulator swaps in a new one when asked to change
(``Simulator.configure`` or ``POST /_sim/config``), so a request always sees one consistent
set of values.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from ..modelspec import PACKAGED_MODELS
from ..settings import TIERS

# Fields that decide where the server listens: fixed once it is started.
LISTEN_FIELDS = frozenset({"host", "port"})
_RATES = ("fail_rate", "error_5xx_rate", "drop_rate", "slow_rate")


@dataclass(frozen=True)
class SimConfig:
    """Every knob of the simulator; the defaults behave like a healthy, unlimited API.

    Limits: ``tier`` (bronze, silver, gold, ultra) supplies both account limits;
    ``images_per_minute`` / ``max_concurrent`` override it one by one; ``None`` everywhere
    means unlimited. ``api_key=None`` accepts any non-empty bearer key. ``webhook_secret``
    (``whsec_...``, one made up per simulator unless set) signs webhooks, which are tried
    ``webhook_attempts`` times, ``webhook_retry_s`` apart at first (``webhooks``). The
    ``*_rate`` fields are probabilities in [0, 1], drawn from ``random.Random(seed)``; a
    prediction that ``fail_rate`` fails ends with ``fail_code`` (None: without a code; see
    ``faults`` for the prompt markers). ``models_dir`` holds the model specs whose allowed
    option values a submit is checked against.
    """

    latency_s: float = 2.0
    jitter_s: float = 0.0
    images_per_minute: int | None = None
    max_concurrent: int | None = None
    tier: str | None = None
    api_key: str | None = field(default=None, repr=False)
    webhook_secret: str = field(default_factory=lambda: f"whsec_{secrets.token_urlsafe(24)}", repr=False)
    webhook_attempts: int = 4
    webhook_retry_s: float = 1.0
    fail_rate: float = 0.0
    fail_code: int | None = 5000
    error_5xx_rate: float = 0.0
    drop_rate: float = 0.0
    slow_rate: float = 0.0
    slow_s: float = 5.0
    seed: int = 0
    image_long_side: int = 256
    sync_timeout_s: float = 30.0
    fetch_inputs: bool = True
    price_usd: Decimal = Decimal("0.10")
    host: str = "127.0.0.1"
    port: int = 0
    models_dir: Path = PACKAGED_MODELS

    def __post_init__(self) -> None:
        if self.tier is not None and self.tier not in TIERS:
            raise ValueError(f"tier must be one of {', '.join(TIERS)}, got {self.tier!r}")
        for name in _RATES:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")
        for name in ("images_per_minute", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be at least 1 (or None for unlimited), got {value}")
        if self.latency_s < 0 or self.jitter_s < 0 or self.slow_s < 0:
            raise ValueError("latency_s, jitter_s and slow_s must not be negative")
        if not isinstance(self.webhook_secret, str) or not self.webhook_secret.startswith("whsec_") or len(self.webhook_secret) <= len("whsec_"):
            raise ValueError("webhook_secret must be whsec_ followed by the key")
        if self.webhook_attempts < 1 or self.webhook_retry_s < 0:
            raise ValueError("webhook_attempts must be at least 1 and webhook_retry_s not negative")
        if self.image_long_side < 1:
            raise ValueError(f"image_long_side must be positive, got {self.image_long_side}")
        if self.fail_code is not None and (isinstance(self.fail_code, bool) or not isinstance(self.fail_code, int)):
            raise ValueError(f"fail_code must be a whole number or None, got {self.fail_code!r}")
        if not isinstance(self.price_usd, Decimal):
            raise ValueError("price_usd must be a Decimal")

    @property
    def limits(self) -> tuple[int | None, int | None]:
        """``(images_per_minute, max_concurrent)`` in force; ``None`` is unlimited."""
        per_minute, concurrent = TIERS[self.tier] if self.tier else (None, None)
        return (
            self.images_per_minute if self.images_per_minute is not None else per_minute,
            self.max_concurrent if self.max_concurrent is not None else concurrent,
        )

    def changed(self, changes: Mapping[str, Any]) -> "SimConfig":
        """A copy with ``changes`` applied; values may come from JSON (``price_usd`` as text).

        Raises ``ValueError`` for an unknown field, a listen address (fixed once serving) or
        an out-of-range value.
        """
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"unknown config field(s): {', '.join(unknown)}")
        fixed = sorted(set(changes) & LISTEN_FIELDS)
        if fixed:
            raise ValueError(f"{', '.join(fixed)} cannot change while the simulator runs")
        values = dict(changes)
        if "price_usd" in values:
            try:
                values["price_usd"] = Decimal(str(values["price_usd"]))
            except InvalidOperation:
                raise ValueError(f"price_usd is not a decimal amount: {values['price_usd']!r}") from None
        if "models_dir" in values:
            values["models_dir"] = Path(values["models_dir"])
        return replace(self, **values)

    def public(self) -> dict[str, Any]:
        """The settings as JSON-ready values, with the API key masked."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("api_key", "webhook_secret"):
                value = None if value is None else "***"
            elif isinstance(value, (Decimal, Path)):
                value = str(value)
            out[f.name] = value
        per_minute, concurrent = self.limits
        out["effective_images_per_minute"] = per_minute
        out["effective_max_concurrent"] = concurrent
        return out
