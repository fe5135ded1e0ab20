"""Latency: each model's moving average of how long its predictions take, shared by the
fleet (``ep:latency:<model>``, seconds as text), and, until a first one was seen completed,
when the oldest of its predictions was submitted (``ep:latency:<model>:unknown-since``,
epoch seconds as text).

The second says something while the first is unknown: if no prediction submitted since
then has been seen completed, the latency is probably at least that old (see
``pipeline.dispatch.Dispatch.latency_floor``). It lapses after ``UNKNOWN_SINCE_TTL_S``, so
a model whose every prediction failed long ago starts afresh.
"""

from __future__ import annotations

from . import keys
from .connection import Connection

UNKNOWN_SINCE_TTL_S = 3600


class Latency:
    """The latency seen so far per model (None until a first prediction was collected)."""

    def __init__(self, conn: Connection):
        self._r = conn.redis

    def read(self, model: str) -> tuple[float | None, float | None]:
        """The latency seen so far, and while there is none, when the oldest prediction was
        submitted (None if no submit was noted): one round trip."""
        seen, since = self._r.mget(keys.latency(model), keys.latency_unknown_since(model))
        if seen:
            return float(seen), None
        return None, float(since) if since else None

    def set(self, model: str, seconds: float) -> None:
        self._r.set(keys.latency(model), f"{seconds:.3f}")

    def note_unknown(self, model: str, submitted_at: float) -> None:
        """A prediction of a model whose latency is unknown was submitted at ``submitted_at``;
        kept only if it is the first noted (the oldest)."""
        self._r.set(keys.latency_unknown_since(model), f"{submitted_at:.3f}", nx=True, ex=UNKNOWN_SINCE_TTL_S)
