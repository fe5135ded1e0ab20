"""One exception hierarchy for editpipe.

Callers catch at the level they care about: ``EditpipeError`` for anything of ours,
``ProviderError`` for the edit API, or the precise subclass they can act on.
No exception text ever contains the API key: the provider client builds messages
from status codes and the provider's own error text only.
"""

from __future__ import annotations

from dataclasses import dataclass


class EditpipeError(Exception):
    """Root of every error editpipe raises on purpose."""


class SettingsError(EditpipeError):
    """The environment or ``configs/`` is incomplete or contradictory."""


@dataclass(frozen=True)
class ManifestIssue:
    """One problem in a manifest, located for a person: ``file:line:col: field: message``.

    As text, it is one line whatever a feed or manifest put in it: control characters and
    line separators are shown escaped (``\\x1e``), never sent to the terminal.
    """

    file: str
    line: int
    col: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}: {self.field}: {self.message}".translate(_ESCAPED)


# C0 and C1 controls, DEL, and what str.splitlines also ends a line at.
_ESCAPED = {c: f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"
            for c in (*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029)}


class ManifestError(EditpipeError):
    """A manifest that cannot be run; carries every issue found, not just the first."""

    def __init__(self, issues: list[ManifestIssue]):
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


class StorageError(EditpipeError):
    """Reading or writing the output storage failed."""


class JobNotFound(EditpipeError):
    """No job with that id is known to Redis."""


class JobLost(JobNotFound):
    """Redis has no record of a job it once held: its state was lost (Redis restarted without
    persistence, was flushed, or was replaced). The job's manifest and outputs are still in
    storage, and ``editpipe resume JOB --output ROOT`` rebuilds it from them."""

    def __init__(self, job_id: str, detail: str = ""):
        self.job_id = job_id
        super().__init__(
            f"job {job_id} is lost: Redis has no record of it any more{detail} (Redis restarted without "
            f"persistence, was flushed, or was replaced). Its stored outputs are kept; "
            f"`editpipe resume {job_id} --output ROOT` (ROOT: the job's output root) rebuilds it from storage "
            f"and runs only what has no output"
        )


class BudgetExceeded(EditpipeError):
    """A paid call would take a job past its budget."""


class ProviderError(EditpipeError):
    """The edit API answered with an error, or could not be reached."""

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)


class ProviderTransient(ProviderError):
    """Worth retrying later: 5xx, timeouts, connection resets, 429."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message, status=status)


class RateLimited(ProviderTransient):
    """HTTP 429: the account's limits were hit. Never a failure of the run."""


class SubmitUnconfirmed(ProviderTransient):
    """The submit was sent but its answer was lost: the provider may have billed it."""


class RunRejected(ProviderError):
    """HTTP 400 (or another 4xx): permanent for this run, the provider's message says why."""


class AuthFailed(ProviderError):
    """HTTP 401/403: permanent for the whole job; stop submitting."""


class PredictionFailed(ProviderError):
    """The prediction reached a terminal status other than ``completed`` (not billed)."""


class UploadInProgress(EditpipeError):
    """Another worker is uploading the same file right now; try this run again shortly."""


class SchedulesFileError(ManifestError):
    """The schedules file cannot be used, or a schedule's manifest cannot be found; every
    issue is located in the schedules file. A ``ManifestError``, so every command prints it
    (and exits) the way it does a manifest's issues."""


class CatalogUnreadable(EditpipeError):
    """A feed or folder could not be opened or read to the end (a transport or format failure)."""


class MissingColumns(EditpipeError):
    """A CSV feed's header lacks columns the manifest names."""

    def __init__(self, columns: list[str], header: list[str]):
        self.columns = columns
        self.header = header
        super().__init__(f"no column {', '.join(map(repr, columns))} (the header has: {', '.join(header)})")


class ReviewError(EditpipeError):
    """A review decision (or a publish) that cannot be taken as asked; nothing was written.

    ``http_status`` is the answer a web page gives for it: 400 a malformed request, 404 a
    run the job does not have, 409 a run in no state to be decided (it has no output)."""

    http_status = 400


class UnknownRun(ReviewError):
    """The job has no run with that run key (or the prefix given names none, or several)."""

    http_status = 404


class NoOutput(ReviewError):
    """The run has no output to decide on (it failed, or never ran)."""

    http_status = 409
