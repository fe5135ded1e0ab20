"""The account limits the provider enforces: images started per minute and tasks in flight."""

from __future__ import annotations

import math
from collections import deque

WINDOW_S = 60.0


class StartWindow:
    """Start times of the last 60 seconds, and the most starts ever seen in one such window.

    A start at time ``s`` is inside the window ending at ``t`` while ``t - s < 60``. Starts
    must be recorded in non-decreasing time order (one event loop, one monotonic clock).
    Because the busiest 60-second window always ends at a start, ``max_in_window`` is exact.
    """

    def __init__(self) -> None:
        self._starts: deque[float] = deque()
        self.max_in_window = 0

    def _prune(self, now: float) -> None:
        while self._starts and now - self._starts[0] >= WINDOW_S:
            self._starts.popleft()

    def retry_after(self, now: float, per_minute: int | None) -> int | None:
        """Whole seconds until one more start fits under ``per_minute``; ``None`` if it fits now.

        Never less than 1, so a client that honours it never spins.
        """
        if per_minute is None:
            return None
        self._prune(now)
        excess = len(self._starts) - per_minute
        if excess < 0:
            return None
        # The oldest excess + 1 starts must leave the window before another one fits.
        frees_at = self._starts[excess] + WINDOW_S
        return max(1, math.ceil(frees_at - now))

    def record(self, now: float) -> None:
        self._prune(now)
        self._starts.append(now)
        self.max_in_window = max(self.max_in_window, len(self._starts))
