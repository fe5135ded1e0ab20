"""Failures: why a run failed, as a small closed set of kinds, and which failures pass.

The provider ends a prediction ``failed`` with a ``code`` beside its ``error``
(wavespeed-api.md, "Failure codes"), or in one of the other terminal statuses
``cancelled``, ``timeout`` and ``deleted``; none of them is billed. ``classify`` reads that
into a ``Failure``: its ``kind`` (what a person or a metric groups by) and whether it is
``transient`` (submit the run again later) or permanent (the run ends ``failed``).

Transient: codes 5000 (internal error), 5003 (service unavailable), 5004 (timeout), any
other 5xxx, a failure without a code, and the status ``timeout``. Permanent: moderation
(1200), the input errors (1400-1405), any other code, and the statuses ``cancelled`` and
``deleted``. Code 1405 ("permanent unless the message says otherwise") is transient when
its message asks to try again.

``ErrorKind`` is closed on purpose: every failed run in ``results.jsonl`` carries one, and
metrics count runs by it, so a new kind is a decision, not a string made up on the spot.
Pure: nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class ErrorKind(StrEnum):
    """Why a run failed, in a word a machine can count by (``error_kind`` of a result).

    - ``moderation``: the provider refused the input or the prompt (code 1200).
    - ``bad_input``: a parameter missing or invalid (codes 1400, 1401), or the submit was
      rejected with HTTP 400.
    - ``media_unreachable``: an input image could not be fetched by the provider (1402), or
      a reference image could not be read or uploaded by editpipe.
    - ``edit_failed``: the provider could not complete the edit (1403, 1405, other codes).
    - ``provider_error``: the provider kept failing for now (internal errors, timeouts,
      5xx, connection errors) past the retries, or answered something unusable (a completed
      edit without an output, an unknown prediction).
    - ``cancelled``: the prediction ended ``cancelled`` or ``deleted`` on the provider's side.
    - ``auth``: the API key was refused (HTTP 401/403); the job stops submitting.
    - ``budget_exhausted``: not started, the job's or the day's budget was used up.
    - ``not_started``: not started, the job was stopped (cancelled, or stopped by an
      earlier run's refused key).
    - ``lost_answer``: a submit's answer was lost; the provider may have billed it.
    - ``storage``: reading a reference image from editpipe's storage failed.
    """

    MODERATION = "moderation"
    BAD_INPUT = "bad_input"
    MEDIA_UNREACHABLE = "media_unreachable"
    EDIT_FAILED = "edit_failed"
    PROVIDER_ERROR = "provider_error"
    CANCELLED = "cancelled"
    AUTH = "auth"
    BUDGET_EXHAUSTED = "budget_exhausted"
    NOT_STARTED = "not_started"
    LOST_ANSWER = "lost_answer"
    STORAGE = "storage"


MODERATION_CODE = 1200
TRANSIENT_CODES = frozenset({5000, 5003, 5004})
_BY_CODE = {
    MODERATION_CODE: ErrorKind.MODERATION,
    1400: ErrorKind.BAD_INPUT,
    1401: ErrorKind.BAD_INPUT,
    1402: ErrorKind.MEDIA_UNREACHABLE,
    1403: ErrorKind.EDIT_FAILED,
    1405: ErrorKind.EDIT_FAILED,
}
_RETRY_HINTS = ("try again", "retry")


@dataclass(frozen=True)
class Failure:
    """A prediction's failure, classified: ``kind``, ``transient`` (worth a new submit), the
    provider's ``code`` (None when it gave none) and its ``message``."""

    kind: ErrorKind
    transient: bool
    code: int | None
    message: str

    @property
    def reason(self) -> str:
        """What a person reads in a failed run's ``error``."""
        code = f" (code {self.code})" if self.code else ""
        return f"the provider failed the edit{code}: {self.message}"


def classify(status: str, code: int | None, error: str) -> Failure:
    """What a prediction that ended in ``status`` (other than ``completed``) with ``code``
    and ``error`` means for its run."""
    message = error or f"the prediction ended {status}"
    if status in ("cancelled", "deleted"):
        return Failure(ErrorKind.CANCELLED, False, code, message)
    if status == "timeout":
        return Failure(ErrorKind.PROVIDER_ERROR, True, code, message)
    if not code or code in TRANSIENT_CODES or 5000 <= code < 6000:
        return Failure(ErrorKind.PROVIDER_ERROR, True, code, message)
    if code == 1405 and any(hint in error.lower() for hint in _RETRY_HINTS):
        return Failure(ErrorKind.EDIT_FAILED, True, code, message)
    return Failure(_BY_CODE.get(code, ErrorKind.EDIT_FAILED), False, code, message)
