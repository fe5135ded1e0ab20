"""Review: what people decide about a finished job's outputs, kept in ``jobs/<job_id>/review.jsonl``.

Each decision (``approve``, ``reject`` with a reason, ``regenerate``) is one appended line
naming the run, the reviewer and the time; the latest line for a run is its state. Lines are
appended through ``Storage.append_text``, so two reviewers on two machines (the page, the
command line, a script) write to one record and neither loses the other's decisions, on S3
and on a local root alike.

A decision is checked against the job's results before anything is written: an unknown run
key (``UnknownRun``), a run that has no output (``NoOutput``), a rejection without a reason
(``ReviewError``) refuse the whole batch, so a request either lands whole or changes nothing.

Outputs layer: reads and writes the job's records in storage; imports the domain (records,
layout, ledger, errors) and ``storage``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import NoOutput, ReviewError, UnknownRun
from .layout import REVIEW, job_file
from .ledger import utc_now
from .records import RunResult, RunStatus
from .storage import Storage

Verdict = Literal["approve", "reject", "regenerate"]
DECISIONS: tuple[Verdict, ...] = ("approve", "reject", "regenerate")
# What a run's latest decision makes it; a run with an output and no decision is "waiting".
STATES = {"approve": "approved", "reject": "rejected", "regenerate": "regenerate"}
WAITING = "waiting"
MIN_PREFIX = 6  # the shortest run key prefix a person may type for a run
MAX_REASON = 2000
MAX_REVIEWER = 200


@dataclass(frozen=True)
class Decision:
    """One reviewer's decision on one run: a line of ``review.jsonl``. ``index`` is the run's
    position in the job (its line in ``results.jsonl``); ``at`` is UTC ISO 8601."""

    run_key: str
    index: int
    decision: Verdict
    reason: str = ""
    reviewer: str = ""
    at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        return {"run_key": self.run_key, "index": self.index, "decision": self.decision, "reason": self.reason,
                "reviewer": self.reviewer, "at": self.at}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Decision:
        decision = data.get("decision")
        if decision not in DECISIONS or not isinstance(data.get("run_key"), str):
            raise ValueError(f"not a review decision: {dict(data)!r}")
        return cls(run_key=data["run_key"], index=int(data.get("index", -1)), decision=decision,
                   reason=str(data.get("reason") or ""), reviewer=str(data.get("reviewer") or ""),
                   at=str(data.get("at") or ""))

    @property
    def state(self) -> str:
        """What it makes its run: ``approved``, ``rejected`` or ``regenerate``."""
        return STATES[self.decision]


def decision_log(storage: Storage, job_id: str) -> list[Decision]:
    """Every decision taken on the job, oldest first (the order they were appended in). A
    line still being written (no newline yet) is left for the next read."""
    try:
        text = storage.get_text(job_file(job_id, REVIEW))
    except FileNotFoundError:
        return []
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    return [Decision.from_dict(json.loads(line)) for line in complete.splitlines() if line.strip()]


def read_decisions(storage: Storage, job_id: str) -> dict[str, Decision]:
    """The latest decision on each run of the job, by run key (a run nobody decided on is absent)."""
    latest: dict[str, Decision] = {}
    for decision in decision_log(storage, job_id):
        latest[decision.run_key] = decision
    return latest


def append_decisions(storage: Storage, job_id: str, decisions: Iterable[Decision]) -> None:
    """Add ``decisions`` to the job's ``review.jsonl`` in one append: all of them or none."""
    lines = "".join(json.dumps(d.to_dict(), separators=(",", ":")) + "\n" for d in decisions)
    if lines:
        storage.append_text(job_file(job_id, REVIEW), lines, "application/x-ndjson")


def job_results(storage: Storage, job_id: str) -> list[RunResult]:
    """The finished job's results (``results.jsonl``), each with its ``index`` (its line, as
    the lines are in run order). ``ReviewError`` when the job has not finished there."""
    try:
        text = storage.get_text(job_file(job_id, "results.jsonl"))
    except FileNotFoundError:
        raise ReviewError(f"job {job_id} has no results at {storage.location(job_file(job_id, 'results.jsonl'))}: "
                          "a job is reviewed once it has finished (and under its own output root)") from None
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [RunResult.from_dict({**line, "index": i}) for i, line in enumerate(lines)]


def has_output(result: RunResult) -> bool:
    """Whether a run has an output a person can decide on: made by this job (succeeded) or
    found made before (skipped)."""
    return result.status in (RunStatus.SUCCEEDED, RunStatus.SKIPPED) and bool(result.output)


def find_run(results: Sequence[RunResult], key: str, job_id: str) -> RunResult:
    """The run named by ``key``: its full run key, or a prefix of at least ``MIN_PREFIX``
    characters that only it has. ``UnknownRun`` otherwise."""
    key = key.strip().lower()
    exact = [r for r in results if r.run_key == key]
    if exact:
        return exact[0]
    if len(key) < MIN_PREFIX:
        raise UnknownRun(f"no run {key!r} in job {job_id} (a run key, or at least {MIN_PREFIX} of its first characters)")
    found = [r for r in results if r.run_key.startswith(key)]
    if not found:
        raise UnknownRun(f"no run {key!r} in job {job_id}")
    if len(found) > 1:
        raise UnknownRun(f"{key!r} starts {len(found)} run keys of job {job_id}: give more of it")
    return found[0]


def make_decisions(results: Sequence[RunResult], job_id: str, wanted: Iterable[tuple[str, str]], *,
                   reason: str = "", reviewer: str = "") -> list[Decision]:
    """The decisions asked for, as ``(run key or prefix, decision)`` pairs, checked against the
    job's ``results``: raises (``UnknownRun``, ``NoOutput``, ``ReviewError``) at the first one
    that cannot be taken, so a caller writes all of them or none."""
    reason = " ".join(reason.split())  # one line: a reason is shown in a table and a log
    reviewer = " ".join(reviewer.split())
    if len(reason) > MAX_REASON:
        raise ReviewError(f"a reason is at most {MAX_REASON} characters ({len(reason)} given)")
    if len(reviewer) > MAX_REVIEWER:
        raise ReviewError(f"a reviewer's name is at most {MAX_REVIEWER} characters")
    decisions: list[Decision] = []
    at = utc_now()
    for key, verdict in wanted:
        if verdict not in DECISIONS:
            raise ReviewError(f"{verdict!r} is not a decision (one of {', '.join(DECISIONS)})")
        if verdict == "reject" and not reason:
            raise ReviewError("a rejection needs a reason (--reason TEXT)")
        result = find_run(results, key, job_id)
        if not has_output(result):
            why = f"it failed: {result.error}" if result.failed else f"it is {result.status.value}"
            raise NoOutput(f"run {result.run_key} of job {job_id} has no output to review ({why})")
        decisions.append(Decision(result.run_key, result.index, verdict, reason, reviewer, at))
    return decisions


def review_states(results: Sequence[RunResult], decisions: Mapping[str, Decision]) -> dict[str, str]:
    """Each run with an output, by run key: ``waiting`` (nobody decided yet), ``approved``,
    ``rejected`` or ``regenerate``."""
    return {r.run_key: decisions[r.run_key].state if r.run_key in decisions else WAITING
            for r in results if has_output(r)}


def passed(result: RunResult, checks: Iterable[str] = ()) -> bool:
    """Whether a run this job made passed its checks: each of ``checks`` (the names its job
    asks for) was made on its output and passed. With none asked for, every output passes; a
    run not checked although its job asks (rebuilt from storage) does not."""
    wanted = set(checks)
    return (result.status is RunStatus.SUCCEEDED and bool(result.output) and wanted <= set(result.checks)
            and result.checks_passed)


def passing_waiting(results: Sequence[RunResult], decisions: Mapping[str, Decision],
                    checks: Iterable[str] = ()) -> list[RunResult]:
    """What ``--approve-passing`` approves: runs this job made that ``passed`` the ``checks``
    its job asks for and that nobody has decided on yet (a rejection is never overturned)."""
    wanted = tuple(checks)
    return [r for r in results if passed(r, wanted) and r.run_key not in decisions]
