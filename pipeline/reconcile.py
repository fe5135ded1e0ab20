"""Reconcile: a job's stored ledger and results, checked against the provider.

Every ledger line must name a prediction the provider completed; every succeeded result
must have its ledger line; every ``unconfirmed_submit`` is listed for a person, since only
the provider's billing can say whether it was charged.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass

from .errors import ProviderError, RunRejected
from .layout import job_file
from .ledger import LineKind, parse_ledger, usd
from .provider import WaveSpeedClient
from .records import RunResult, RunStatus
from .storage import Storage


@dataclass(frozen=True)
class Difference:
    kind: str  # not_completed | unknown_prediction | missing_ledger_line | charged_twice |
    # ledger_without_result | cost_mismatch | unconfirmed_submit | unreachable
    run_key: str | None
    prediction_id: str | None
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def _results(storage: Storage, job_id: str) -> list[RunResult]:
    text = storage.get_text(job_file(job_id, "results.jsonl"))
    return [RunResult.from_dict(json.loads(line)) for line in text.splitlines() if line.strip()]


def reconcile(storage: Storage, job_id: str, client: WaveSpeedClient) -> tuple[int, list[Difference]]:
    """Returns how many ledger lines were checked and every difference found."""
    ledger = parse_ledger(storage.get_text(job_file(job_id, "ledger.jsonl")))
    results = _results(storage, job_id)
    diffs: list[Difference] = []
    succeeded = {r.prediction_id: r for r in results if r.status is RunStatus.SUCCEEDED}
    confirmed = [line for line in ledger if line.kind is LineKind.COMPLETED]
    counts = Counter(line.prediction_id for line in confirmed)
    for line in ledger:
        if line.kind is LineKind.UNCONFIRMED_SUBMIT:
            diffs.append(Difference(
                "unconfirmed_submit", line.run_key, None,
                f"a submit's answer was lost; it may have been billed ${usd(line.cost_usd)} "
                "(check the provider's billing for this time)",
            ))
    for pid, n in counts.items():
        if n > 1:
            diffs.append(Difference("charged_twice", None, pid, f"{n} ledger lines for one prediction"))
    for line in confirmed:
        pid = line.prediction_id
        try:
            prediction = client.result(pid)
        except RunRejected:
            diffs.append(Difference("unknown_prediction", line.run_key, pid, "the provider does not know it "
                                    "(or no longer: it keeps predictions 7 days)"))
            continue
        except ProviderError as exc:
            diffs.append(Difference("unreachable", line.run_key, pid, str(exc)))
            continue
        if not prediction.completed:
            diffs.append(Difference("not_completed", line.run_key, pid, f"the provider says {prediction.status}"))
        result = succeeded.get(pid)
        if result is None:
            diffs.append(Difference("ledger_without_result", line.run_key, pid, "charged, but no succeeded result"))
        elif result.cost_usd != line.cost_usd:
            diffs.append(Difference("cost_mismatch", line.run_key, pid,
                                    f"result says ${usd(result.cost_usd)}, ledger ${usd(line.cost_usd)}"))
    for pid, result in succeeded.items():
        if pid not in counts:
            diffs.append(Difference("missing_ledger_line", result.run_key, pid, "succeeded, but never charged"))
    return len(ledger), diffs
