"""Money: exact amounts and the ledger lines that record them.

Amounts are ``Decimal`` everywhere in Python and decimal strings in every file. Redis
counters hold micro-USD integers, so an atomic ``HINCRBY`` adds money without a float.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from enum import StrEnum
from typing import Any

from .layout import JOBS, job_file

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


def parse_time(value: str | None) -> datetime | None:
    """A timestamp as ``utc_now`` writes it (or any ISO 8601), or None for none or garbage."""
    try:
        return datetime.fromisoformat(value) if value else None
    except ValueError:
        return None


class LineKind(StrEnum):
    """``completed``: a confirmed charge. ``unconfirmed_submit``: a submit whose answer was
    lost (the provider may have billed it), at the price it may have cost: an estimate.
    ``editpipe reconcile --settle`` replaces each estimate by what the provider's billing
    records say: ``settled``, the lost submit's prediction found on the bill (its id, the
    billed price), or ``not_billed``, a zero line (the provider never created it, or created
    it and did not bill it)."""

    COMPLETED = "completed"
    UNCONFIRMED_SUBMIT = "unconfirmed_submit"
    SETTLED = "settled"
    NOT_BILLED = "not_billed"

    @property
    def settled(self) -> bool:
        """True when the amount is the provider's, False for an estimate."""
        return self is not LineKind.UNCONFIRMED_SUBMIT


@dataclass(frozen=True)
class LedgerEntry:
    """One billed prediction (or one that may have been billed, by ``kind``)."""

    prediction_id: str | None
    run_key: str
    job_id: str
    model: str
    cost_usd: Decimal
    charged_at: str
    kind: LineKind = LineKind.COMPLETED

    def to_dict(self) -> dict[str, str | None]:
        """As stored, in Redis and in ``ledger.jsonl``: the amount a decimal string."""
        return {
            "prediction_id": self.prediction_id,
            "run_key": self.run_key,
            "job_id": self.job_id,
            "model": self.model,
            "cost_usd": usd(self.cost_usd),
            "charged_at": self.charged_at,
            "kind": self.kind.value,
        }

    @classmethod
    def from_dict(cls, line: dict[str, Any]) -> "LedgerEntry":
        return cls(
            prediction_id=line.get("prediction_id"),
            run_key=line["run_key"],
            job_id=line["job_id"],
            model=line["model"],
            cost_usd=Decimal(line["cost_usd"]),
            charged_at=line["charged_at"],
            kind=LineKind(line.get("kind") or LineKind.COMPLETED),
        )


@dataclass(frozen=True)
class JobLedger:
    """One job's ledger as stored: the lasting record of what it was charged."""

    job_id: str
    schedule: str
    lines: list[LedgerEntry]

    def total(self, day: str | None = None, kind: LineKind | None = None, *, settled: bool | None = None) -> Decimal:
        """The sum of the lines charged on ``day`` (all days by default), of one ``kind`` or,
        with ``settled``, of the settled lines only (True) or the estimates only (False)."""
        return sum(
            (line.cost_usd for line in self.lines
             if (day is None or line.charged_at.startswith(day)) and (kind is None or line.kind == kind)
             and (settled is None or line.kind.settled == settled)),
            Decimal("0"),
        )


def parse_ledger(text: str) -> list[LedgerEntry]:
    """The lines of a ``ledger.jsonl``."""
    return [LedgerEntry.from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]


def ledger_text(lines: list[LedgerEntry]) -> str:
    """A ``ledger.jsonl``'s text: one compact JSON object a line, as finalize writes it."""
    return "".join(json.dumps(line.to_dict(), separators=(",", ":")) + "\n" for line in lines)


def read_ledgers(storage, job_id: str | None = None) -> list[JobLedger]:
    """Every finished job's ``ledger.jsonl`` under an output root (or one job's)."""
    out = []
    for key in storage.list_keys(f"{JOBS}{job_id}/" if job_id else JOBS):
        parts = key.split("/")
        if len(parts) != 3 or parts[2] != "ledger.jsonl":
            continue
        lines = parse_ledger(storage.get_text(key))
        try:
            schedule = json.loads(storage.get_text(job_file(parts[1], "summary.json"))).get("schedule") or ""
        except FileNotFoundError:
            schedule = ""
        out.append(JobLedger(job_id=parts[1], schedule=schedule, lines=lines))
    return out

