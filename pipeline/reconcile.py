"""Reconcile: a job's stored ledger checked against the provider's billing records.

``reconcile`` reads the job's records from storage (``ledger.jsonl``, ``results.jsonl``,
``summary.json``) and asks the provider two things:

- the deductions of every prediction the ledger names (``POST /api/v3/billings/search`` by
  prediction ids, ``CHUNK`` ids a request, page after page), so each line's amount is
  compared with what was actually deducted;
- the predictions of the job's model(s) created in the job's time window (from its
  ``created_at`` to its ``finished_at``, ``PAD`` either side for the clocks) that no job's
  ledger or results under the same output root name, and their deductions. Those are what a
  lost submit answer leaves behind: the provider created and billed a prediction whose id
  editpipe never learnt. Predictions another job names are left out because another job may
  run at the same time on the same account; a job still running has no records in storage
  yet, so reconcile once the jobs sharing the account and the window have finished.

Each difference is listed with its amounts, and the totals: the ledger's and the bill's
(the deductions of the ledger's predictions plus those of the unknown billed ones).

``settle`` then writes what was found into the job's ``ledger.jsonl``: each
``unconfirmed_submit`` line (an estimate) becomes a ``settled`` line (a found prediction's id
and billed price) or a ``not_billed`` zero line. How found predictions are given to lines,
since billing records carry no run key: by model, then by time. A lost submit's prediction is
created after its request was sent and before its answer was given up (the line's
``charged_at``), so a prediction created at ``t`` fits a line charged in ``[t - PAD,
t + in_flight_s + PAD]``; taking predictions oldest first, each gets the earliest-charged free
line it fits (for such windows this pairs as many as any assignment can). Predictions left
over then take the lines left over of their model in time order: every one of them is this
job's by model and window and no other ledger claims them, so which run it is booked to may
be a guess, but the money is exact. Lines still left are zero lines; predictions still left
(more than the job's lost submits: not evidently the job's, e.g. a website prediction of the
same model) are listed and not booked. A prediction still running cannot be settled yet:
``settle`` refuses until it ends. After a settle the job's ledger equals its billing records
to the cent, and settling again changes nothing (no estimate is left to replace, and the
found predictions are now known to the ledger).

Money is ``Decimal`` throughout: prices come from the provider's text, never float arithmetic.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from .errors import EditpipeError
from .layout import JOBS, job_file
from .ledger import LedgerEntry, LineKind, ledger_text, parse_ledger, parse_time, usd
from .provider import Prediction, WaveSpeedClient
from .records import RunResult, RunStatus
from .storage import Storage

CHUNK = 100  # prediction ids per billing search (its page_size is at most 100 too)
PAGE_SIZE = 100
PAD = timedelta(seconds=60)  # clock difference between editpipe and the provider, either way
ZERO = Decimal("0")


class SettleRefused(EditpipeError):
    """The bill is not final yet (a prediction in the job's window is still running)."""


@dataclass(frozen=True)
class Difference:
    kind: str  # amount_differs | not_billed | charged_twice | unconfirmed_submit | billed_unknown |
    # still_running | missing_ledger_line | ledger_without_result | cost_mismatch
    run_key: str | None
    prediction_id: str | None
    detail: str
    ledger_usd: Decimal | None = None
    billed_usd: Decimal | None = None

    def to_dict(self) -> dict:
        out = asdict(self)
        for name in ("ledger_usd", "billed_usd"):
            out[name] = None if out[name] is None else usd(out[name])
        return out


@dataclass(frozen=True)
class Found:
    """A prediction of the job's model in its window that no ledger under the root knows."""

    prediction: Prediction
    model: str  # the job's model it was listed under
    billed_usd: Decimal  # its deductions (zero for a failed one)
    created: datetime | None

    @property
    def running(self) -> bool:
        return not self.prediction.terminal


@dataclass
class Reconciliation:
    """What ``reconcile`` saw: the job's ledger, its bill, and every difference."""

    job_id: str
    lines: list[LedgerEntry]
    billed: dict[str, Decimal]  # deductions by prediction id, for the ledger's predictions
    found: list[Found]
    differences: list[Difference] = field(default_factory=list)

    @property
    def ledger_usd(self) -> Decimal:
        return sum((line.cost_usd for line in self.lines), ZERO)

    @property
    def bill_usd(self) -> Decimal:
        return sum(self.billed.values(), ZERO) + sum((f.billed_usd for f in self.found), ZERO)

    def to_dict(self) -> dict:
        return {"job_id": self.job_id, "ledger_lines": len(self.lines), "ledger_usd": usd(self.ledger_usd),
                "bill_usd": usd(self.bill_usd), "differences": [d.to_dict() for d in self.differences]}


def _stamp(at: datetime) -> str:
    """As the provider writes times: ``2026-11-23T12:00:00.000Z``."""
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _aware(value: str | None) -> datetime | None:
    at = parse_time(value)
    return at if at is None or at.tzinfo is not None else at.replace(tzinfo=UTC)


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield ids[start:start + CHUNK]


def deductions(client: WaveSpeedClient, prediction_ids: Iterable[str]) -> dict[str, Decimal]:
    """What the provider deducted for each of ``prediction_ids`` (those it never billed are
    absent), from its billing records in chunks and pages."""
    billed: dict[str, Decimal] = defaultdict(lambda: ZERO)
    for chunk in _chunks(sorted(set(prediction_ids))):
        wanted = set(chunk)
        for record in client.iter_billings(prediction_ids=chunk, page_size=PAGE_SIZE):
            if record.billing_type == "deduct" and record.prediction_id in wanted:
                billed[record.prediction_id] += record.price_usd
    return dict(billed)


def _known_ids(storage: Storage) -> set[str]:
    """Every prediction id a job's ledger or results under the root names (a failed
    prediction is in its job's results only)."""
    known: set[str] = set()
    for key in storage.list_keys(JOBS):
        parts = key.split("/")
        if len(parts) == 3 and parts[2] in ("ledger.jsonl", "results.jsonl"):
            for line in storage.get_text(key).splitlines():
                if line.strip() and (pid := json.loads(line).get("prediction_id")):
                    known.add(str(pid))
    return known


def _window(summary: dict) -> tuple[datetime, datetime]:
    start = _aware(summary.get("created_at")) or _aware(summary.get("started_at"))
    if start is None:
        raise EditpipeError(f"job {summary.get('job_id')}: its summary has no created_at")
    end = _aware(summary.get("finished_at")) or datetime.now(UTC)
    return start - PAD, end + PAD


def _find_unknown(client: WaveSpeedClient, models: Iterable[str], window: tuple[datetime, datetime],
                  known: set[str]) -> list[Found]:
    after, before = (_stamp(at) for at in window)
    listed: dict[str, tuple[str, Prediction]] = {}
    for model in models:
        for pred in client.iter_recent_predictions(model=model, created_after=after, created_before=before,
                                                   page_size=PAGE_SIZE):
            if pred.id and pred.id not in known:
                listed.setdefault(pred.id, (model, pred))
    billed = deductions(client, listed)
    found = [Found(pred, model, billed.get(pid, ZERO), _aware(pred.created_at)) for pid, (model, pred) in listed.items()]
    far = datetime.max.replace(tzinfo=UTC)
    return sorted(found, key=lambda f: (f.created or far, f.prediction.id))


def reconcile(storage: Storage, job_id: str, client: WaveSpeedClient) -> Reconciliation:
    """Every difference between the job's stored ledger and the provider's billing records."""
    try:
        lines = parse_ledger(storage.get_text(job_file(job_id, "ledger.jsonl")))
        results = [RunResult.from_dict(json.loads(line))
                   for line in storage.get_text(job_file(job_id, "results.jsonl")).splitlines() if line.strip()]
        summary = json.loads(storage.get_text(job_file(job_id, "summary.json")))
    except FileNotFoundError:
        raise EditpipeError(f"job {job_id}: its records are not under this output root "
                            "(a job has them once it has finished)") from None
    known = _known_ids(storage)
    own = [line.prediction_id for line in lines if line.prediction_id]
    models = sorted({line.model for line in lines})
    rec = Reconciliation(job_id, lines, deductions(client, own), _find_unknown(client, models, _window(summary), known))
    rec.differences = _bill_differences(rec) + _result_differences(lines, results)
    return rec


def _bill_differences(rec: Reconciliation) -> list[Difference]:
    diffs: list[Difference] = []
    by_id: dict[str, list[LedgerEntry]] = defaultdict(list)
    for line in rec.lines:
        if line.prediction_id:
            by_id[line.prediction_id].append(line)
        elif line.kind is LineKind.UNCONFIRMED_SUBMIT:
            diffs.append(Difference("unconfirmed_submit", line.run_key, None,
                                    "a submit's answer was lost; booked at an estimate",
                                    ledger_usd=line.cost_usd))
    for pid, booked in by_id.items():
        ledger_usd = sum((line.cost_usd for line in booked), ZERO)
        billed = rec.billed.get(pid)
        run_key = booked[0].run_key
        if len(booked) > 1:
            diffs.append(Difference("charged_twice", run_key, pid, f"{len(booked)} ledger lines for one prediction",
                                    ledger_usd=ledger_usd, billed_usd=billed or ZERO))
        elif billed is None and ledger_usd:
            diffs.append(Difference("not_billed", run_key, pid, "a ledger line with no deduction on the bill",
                                    ledger_usd=ledger_usd, billed_usd=ZERO))
        elif (billed or ZERO) != ledger_usd:
            diffs.append(Difference("amount_differs", run_key, pid, "the billed amount is not the ledger's",
                                    ledger_usd=ledger_usd, billed_usd=billed or ZERO))
    for found in rec.found:
        pid, when = found.prediction.id, found.prediction.created_at or "?"
        if found.running:
            diffs.append(Difference("still_running", None, pid,
                                    f"created {when}, unknown to every ledger, still {found.prediction.status}"))
        elif found.billed_usd:
            diffs.append(Difference("billed_unknown", None, pid, f"created {when}, billed, unknown to every ledger",
                                    ledger_usd=ZERO, billed_usd=found.billed_usd))
    return diffs


def _result_differences(lines: list[LedgerEntry], results: list[RunResult]) -> list[Difference]:
    """The job's own records against each other: a succeeded run's ledger line and amount."""
    diffs: list[Difference] = []
    succeeded = {r.prediction_id: r for r in results if r.status is RunStatus.SUCCEEDED}
    charged = Counter(line.prediction_id for line in lines if line.kind is LineKind.COMPLETED)
    for line in lines:
        if line.kind is not LineKind.COMPLETED:
            continue
        result = succeeded.get(line.prediction_id)
        if result is None:
            diffs.append(Difference("ledger_without_result", line.run_key, line.prediction_id,
                                    "charged, but no succeeded result", ledger_usd=line.cost_usd))
        elif result.cost_usd != line.cost_usd:
            diffs.append(Difference("cost_mismatch", line.run_key, line.prediction_id,
                                    f"result says ${usd(result.cost_usd)}, ledger ${usd(line.cost_usd)}",
                                    ledger_usd=line.cost_usd))
    for pid, result in succeeded.items():
        if pid not in charged:
            diffs.append(Difference("missing_ledger_line", result.run_key, pid, "succeeded, but never charged"))
    return diffs


@dataclass(frozen=True)
class Settlement:
    """What ``settle`` wrote: each replaced line, and the found predictions it left unbooked."""

    replaced: list[tuple[LedgerEntry, LedgerEntry]]
    by_order: int  # of the replaced lines, those paired by order rather than by time window
    unbooked: list[Found]
    ledger_usd: Decimal


def _fits(found: Found, line: LedgerEntry, in_flight: timedelta) -> bool:
    charged = _aware(line.charged_at)
    if found.created is None or charged is None:
        return False
    return found.created - PAD <= charged <= found.created + in_flight + PAD


def _assign(found: list[Found], lines: list[tuple[int, LedgerEntry]], in_flight: timedelta
            ) -> tuple[dict[int, Found], int, list[Found]]:
    """Line position -> found prediction, how many of them were paired by order, the rest."""
    far = datetime.max.replace(tzinfo=UTC)
    free = sorted(lines, key=lambda item: (_aware(item[1].charged_at) or far, item[0]))
    given: dict[int, Found] = {}
    left: list[Found] = []
    for f in found:  # oldest first: the earliest-charged free line it fits
        pick = next((item for item in free if item[1].model == f.model and _fits(f, item[1], in_flight)), None)
        if pick is None:
            left.append(f)
        else:
            free.remove(pick)
            given[pick[0]] = f
    unbooked: list[Found] = []
    by_order = 0
    for f in left:
        pick = next((item for item in free if item[1].model == f.model), None)
        if pick is None:
            unbooked.append(f)
        else:
            free.remove(pick)
            given[pick[0]] = f
            by_order += 1
    return given, by_order, unbooked


def settle(storage: Storage, rec: Reconciliation, *, in_flight_s: float = 60.0) -> Settlement:
    """Replace each ``unconfirmed_submit`` line of the job's stored ledger by what the bill
    says (see the module's docstring); ``in_flight_s``: the longest a submit's answer is waited
    for (``EDITPIPE_REQUEST_TIMEOUT``). Writes nothing when there is nothing to replace."""
    running = [f for f in rec.found if f.running]
    if running:
        raise SettleRefused(f"job {rec.job_id}: {len(running)} prediction(s) in its window are still running "
                            "(their bill is not final); settle once they have ended")
    lines = list(rec.lines)
    unconfirmed = [(i, line) for i, line in enumerate(lines) if line.kind is LineKind.UNCONFIRMED_SUBMIT]
    given, by_order, unbooked = _assign(rec.found, unconfirmed, timedelta(seconds=in_flight_s))
    replaced = []
    for i, line in unconfirmed:
        f = given.get(i)
        if f is not None and f.billed_usd:
            new = replace(line, prediction_id=f.prediction.id, cost_usd=f.billed_usd, kind=LineKind.SETTLED)
        else:  # never created, or created and not billed (failed): nothing was deducted
            new = replace(line, prediction_id=f.prediction.id if f else None, cost_usd=ZERO, kind=LineKind.NOT_BILLED)
        lines[i] = new
        replaced.append((line, new))
    if replaced:
        storage.put_text(job_file(rec.job_id, "ledger.jsonl"), ledger_text(lines), "application/x-ndjson")
    return Settlement(replaced, by_order, unbooked, sum((line.cost_usd for line in lines), ZERO))
