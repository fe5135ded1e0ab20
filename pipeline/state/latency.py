"""Latency: each model's moving average of how long its predictions take, shared by the
fleet (``ep:latency:<model>``, seconds as text)."""

from __future__ import annotations

from . import keys
from .connection import Connection


class Latency:
    """The latency seen so far per model (None until a first prediction was collected)."""

    def __init__(self, conn: Connection):
        self._r = conn.redis

    def get(self, model: str) -> float | None:
        raw = self._r.get(keys.latency(model))
        return float(raw) if raw else None

    def set(self, model: str, seconds: float) -> None:
        self._r.set(keys.latency(model), f"{seconds:.3f}")
