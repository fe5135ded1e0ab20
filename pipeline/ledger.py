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

    prediction_id: str | None
    run_key: str
    job_id: str
    model: str
    cost_usd: str
    charged_at: str
    kind: str = "completed"

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


@dataclass(frozen=True)
class JobLedger:
    """One job's ledger as stored: the lasting record of what it was charged."""

    job_id: str
    schedule: str
    lines: list[dict]

    def total(self, day: str | None = None, kind: str | None = None) -> Decimal:
        return sum(
            (Decimal(line["cost_usd"]) for line in self.lines
             if (day is None or line["charged_at"].startswith(day)) and (kind is None or line.get("kind") == kind)),
            Decimal("0"),
        )


def read_ledgers(storage, job_id: str | None = None) -> list[JobLedger]:
    """Every finished job's ``ledger.jsonl`` under an output root (or one job's)."""
    import json

    prefix = f"jobs/{job_id}/" if job_id else "jobs/"
    out = []
    for key in storage.list_keys(prefix):
        parts = key.split("/")
        if len(parts) != 3 or parts[2] != "ledger.jsonl":
            continue
        lines = [json.loads(line) for line in storage.get_text(key).splitlines() if line.strip()]
        try:
            schedule = json.loads(storage.get_text(f"jobs/{parts[1]}/summary.json")).get("schedule") or ""
        except FileNotFoundError:
            schedule = ""
        out.append(JobLedger(job_id=parts[1], schedule=schedule, lines=lines))
    return out
