"""Money: exact amounts and the ledger lines that record them.

Amounts are ``Decimal`` everywhere in Python and decimal strings in every file. Redis
counters hold micro-USD integers, so an atomic ``HINCRBY`` adds money without a float.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from decimal import Decimal

MICROS = Decimal(1_000_000)
CENT = Decimal("0.01")


def to_micros(amount: Decimal) -> int:
    micros = amount * MICROS
    if micros != micros.to_integral_value():
        raise ValueError(f"{amount} USD is finer than a micro-dollar")
    return int(micros)


def from_micros(micros: int | str) -> Decimal:
    return (Decimal(int(micros)) / MICROS).quantize(Decimal("0.000001")).normalize() if int(micros) else Decimal("0")


def usd(amount: Decimal) -> str:
    """A decimal string with at least cents: ``Decimal('0.1')`` → ``'0.10'``."""
    return str(amount.quantize(CENT) if amount == amount.quantize(CENT) else amount)


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class LedgerEntry:
    """One billed prediction. ``kind`` is ``completed`` for a confirmed charge and
    ``unconfirmed_submit`` for a submit whose answer was lost (it may have been billed)."""

    prediction_id: str
    run_key: str
    job_id: str
    model: str
    cost_usd: str
    charged_at: str
    kind: str = "completed"

    def to_dict(self) -> dict[str, str]:
        return asdict(self)
