"""Records: what a run and a job end as, as typed values.

A ``RunResult`` is one line of a job's ``results.jsonl`` (and its entry in Redis until the
job is finalized); a ``Sidecar`` is the JSON stored next to an output. Money is ``Decimal``
in memory and a decimal string (``usd``) in every dict, so the files read exactly as they
always have. Pure values: nothing here reads or writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .failures import ErrorKind
from .ledger import usd, utc_now

if TYPE_CHECKING:
    from .plan import Run


class RunStatus(StrEnum):
    """How a planned run ended."""

    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"  # its output already existed for the same run key: $0
    FAILED = "failed"


class JobState(StrEnum):
    """A job's status: ``queued`` and ``running`` while it runs, one of the others once final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"  # some runs failed, some did not
    FAILED = "failed"
    CANCELLED = "cancelled"
    BUDGET_EXHAUSTED = "budget_exhausted"


@dataclass(frozen=True)
class RunResult:
    """How one run ended. ``thumbnail``: the small picture the report shows, when one was
    made at collection. ``retryable`` (``editpipe resume`` may run it again), ``not_started``
    (it was never sent), ``error_kind`` (why it failed, one of ``ErrorKind``) and ``code``
    (the provider's failure code, when it gave one) mean something for a failed run only.
    ``checks``: the automatic checks of its output at collection (``pipeline.checks``), by
    name, each ``{"passed": bool, "detail": str}``; ``{}`` when its job asks for none (and for
    a run that was not collected by this job: skipped or failed)."""

    index: int
    run_key: str
    image_set: str
    prompt: str
    variant: int
    options: dict[str, Any]
    status: RunStatus
    output: str | None = None
    prediction_id: str | None = None
    cost_usd: Decimal = Decimal("0")
    error: str | None = None
    finished_at: str = field(default_factory=utc_now)
    thumbnail: str | None = None
    retryable: bool = False
    not_started: bool = False
    error_kind: ErrorKind | None = None
    code: int | None = None
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, run: Run, status: RunStatus, *, output: str | None = None, prediction_id: str | None = None,
           cost_usd: Decimal = Decimal("0"), error: str | None = None, thumbnail: str | None = None,
           retryable: bool = False, not_started: bool = False, error_kind: ErrorKind | None = None,
           code: int | None = None, checks: dict[str, dict[str, Any]] | None = None) -> "RunResult":
        """Run ``run``'s result, finished now."""
        return cls(index=run.index, run_key=run.run_key, image_set=run.image_set, prompt=run.prompt_id,
                   variant=run.variant, options=run.options, status=status, output=output,
                   prediction_id=prediction_id, cost_usd=cost_usd, error=error, thumbnail=thumbnail,
                   retryable=retryable, not_started=not_started, error_kind=error_kind, code=code,
                   checks=checks or {})

    @property
    def failed(self) -> bool:
        return self.status is RunStatus.FAILED

    @property
    def checks_passed(self) -> bool:
        """Whether every check of its output passed (True when it had none: see
        ``checked``)."""
        return checks_passed(self.checks)

    @property
    def checked(self) -> bool:
        """Whether its output was checked at all (its job asked for checks, and collected it)."""
        return bool(self.checks)

    @property
    def shown_output(self) -> str | None:
        """The output a person can look at: none for a failed run."""
        return self.output if self.output and not self.failed else None

    def to_dict(self) -> dict[str, Any]:
        """As stored in Redis: ``public()`` with the run's ``index``."""
        result: dict[str, Any] = {
            "index": self.index,
            "run_key": self.run_key,
            "image_set": self.image_set,
            "prompt": self.prompt,
            "variant": self.variant,
            "options": self.options,
            "status": self.status.value,
            "output": self.output,
            "prediction_id": self.prediction_id,
            "cost_usd": usd(self.cost_usd),
            "error": self.error,
            "finished_at": self.finished_at,
        }
        if self.thumbnail:
            result["thumbnail"] = self.thumbnail
        if self.checks:
            result["checks"] = self.checks
        if self.failed:
            result["retryable"] = self.retryable
            result["not_started"] = self.not_started
            result["error_kind"] = self.error_kind.value if self.error_kind else None
            result["code"] = self.code
        return result

    def public(self) -> dict[str, Any]:
        """One line of ``results.jsonl``."""
        result = self.to_dict()
        del result["index"]
        return result

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResult":
        """From ``to_dict`` or ``public`` (a line of ``results.jsonl`` has no index: -1)."""
        return cls(
            index=data.get("index", -1),
            run_key=data["run_key"],
            image_set=data["image_set"],
            prompt=data["prompt"],
            variant=data["variant"],
            options=data.get("options") or {},
            status=RunStatus(data["status"]),
            output=data.get("output"),
            prediction_id=data.get("prediction_id"),
            cost_usd=Decimal(data.get("cost_usd") or "0"),
            error=data.get("error"),
            finished_at=data.get("finished_at") or "",
            thumbnail=data.get("thumbnail"),
            retryable=bool(data.get("retryable")),
            not_started=bool(data.get("not_started")),
            error_kind=_kind(data.get("error_kind")),
            code=data.get("code") if isinstance(data.get("code"), int) else None,
            checks=data.get("checks") if isinstance(data.get("checks"), dict) else {},
        )


def checks_passed(checks: dict[str, dict[str, Any]]) -> bool:
    """Whether every check in ``checks`` (as ``RunResult.checks`` holds them) passed; True for none."""
    return all(bool(check.get("passed")) for check in checks.values())


def _kind(raw: Any) -> ErrorKind | None:
    """A stored ``error_kind``; None for a line written before kinds were kept."""
    try:
        return ErrorKind(raw) if raw else None
    except ValueError:
        return None


def skipped_result(run: Run, existing_output: str) -> RunResult:
    """A run whose output an earlier job already made for the same run key: done at $0."""
    return RunResult.of(run, RunStatus.SKIPPED, output=existing_output)


@dataclass(frozen=True)
class Sidecar:
    """The JSON stored next to an output: what made it, and what it cost."""

    run: Run
    job_id: str
    prediction_id: str
    cost_usd: Decimal
    created_at: str = field(default_factory=utc_now)

    def to_dict(self) -> dict[str, Any]:
        run = self.run
        return {
            "run_key": run.run_key,
            "job_id": self.job_id,
            "model": run.model,
            "prompt": run.prompt,
            # A local reference's path says nothing to whoever reads the output root.
            "inputs": [{"uri": ref.uri if ref.kind != "local" else Path(ref.uri).name, "identity": ref.identity}
                       for ref in run.inputs],
            "options": run.options,
            "vars": run.vars,
            "image_set": run.image_set,
            "prompt_id": run.prompt_id,
            "variant": run.variant,
            "prediction_id": self.prediction_id,
            "cost_usd": usd(self.cost_usd),
            "output": run.output_key,
            "created_at": self.created_at,
        }
