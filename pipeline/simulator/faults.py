"""Injected prediction failures: how a created prediction ends when it is not to complete.

The provider ends such a prediction ``failed`` with a failure ``code`` beside its ``error``,
or in one of the statuses ``timeout``, ``cancelled`` or ``deleted``; none is billed
(wavespeed-api.md, "Failure codes"). A test picks the ending with a marker in the prompt:

- ``[sim:fail]``: every submit fails with code 1403 (the task could not be completed), a
  permanent failure, and the error "simulated failure";
- ``[sim:fail:CODE]``: every submit fails with CODE (``1200`` moderation, ``1402``,
  ``5000``, ...; ``none`` for a failure without a code);
- ``[sim:fail-once:CODE]``: the first submit of a run key fails with CODE, later ones succeed;
- ``[sim:status:S]`` / ``[sim:status-once:S]``: every (the first) submit ends in status S,
  one of ``timeout``, ``cancelled``, ``deleted``.

Without a marker, ``fail_rate`` of the predictions fail with the config's ``fail_code``
(5000 by default: a provider hiccup that a new submit gets past).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import SimConfig
    from .state import SimState

BARE_FAIL = 1403, "simulated failure"
MESSAGES = {
    1200: "content moderation: the input or the prompt was refused",
    1400: "a required parameter is missing",
    1401: "a parameter value is invalid",
    1402: "an input URL could not be fetched",
    1403: "the task could not be completed",
    1405: "the task failed",
    5000: "internal error, please try again later",
    5003: "service unavailable, please try again later",
    5004: "timeout, please try again later",
}
_MARKER = re.compile(r"\[sim:(fail|fail-once):(\d+|none)\]|\[sim:(status|status-once):(timeout|cancelled|deleted)\]")


@dataclass(frozen=True)
class Ending:
    """How a prediction that will not complete ends: its terminal ``status``, its failure
    ``code`` (None: none given) and its ``error``."""

    status: str
    code: int | None
    error: str


def failure(code: int | None, detail: str = "") -> Ending:
    """A ``failed`` ending with ``code`` and the provider's message for it."""
    message = MESSAGES.get(code, "simulated failure") if code is not None else "simulated failure"
    return Ending("failed", code, f"{message}: {detail}" if detail else message)


def planned_ending(prompt: str, run_key: str, state: SimState, cfg: SimConfig) -> Ending | None:
    """How a prediction created now for ``prompt`` and ``run_key`` ends, or None: it completes.
    A ``-once`` marker fires for the first prediction of its run key only."""
    if "[sim:fail]" in prompt:
        return Ending("failed", *BARE_FAIL)
    for fail, fail_code, status, status_name in _MARKER.findall(prompt):
        kind, value = (fail, fail_code) if fail else (status, status_name)
        if kind.endswith("-once") and not state.first_time(f"{kind}:{value}", run_key):
            continue
        if fail:
            return failure(None if value == "none" else int(value))
        return Ending(value, None, f"simulated {value}")
    if state.chance(cfg.fail_rate):
        return failure(cfg.fail_code)
    return None
