"""Figures about faults, computed from what the simulator saw (for ``bench/chaos.py``).

A run is *started* when the provider creates its prediction: the simulator's
``/_sim/predictions`` gives each prediction's ``created_at`` (UTC, millisecond resolution,
stamped by the simulator's own clock, which is the machine's: the benches run everything on
one host). A fault's time is the Unix time the bench sent its signal (``time.time()``).
"""

from __future__ import annotations

import bisect

from _common import created_times


def seconds_to_next_start(faults: list[float], predictions: list[dict]) -> list[float | None]:
    """For each fault (Unix time), the seconds until the provider created the next
    prediction after it: from a SIGKILL of a worker to the next run started on the workers
    left (or restarted). None when no prediction was created after that fault.

    A submit already on the wire when the fault struck may be created a few milliseconds
    after it; that start is counted, as the provider saw it. Faults need not be sorted.
    """
    starts = created_times(predictions)
    out: list[float | None] = []
    for fault in faults:
        i = bisect.bisect_right(starts, fault)
        out.append(starts[i] - fault if i < len(starts) else None)
    return out


def longest_pause_after(fault: float, predictions: list[dict], until: float | None = None) -> float:
    """The longest time without a new prediction from ``fault`` to the last prediction
    created (or to ``until``): how long the fleet stopped starting runs, not only how soon
    it started one again."""
    starts = [t for t in created_times(predictions) if t > fault and (until is None or t <= until)]
    edges = [fault, *starts]
    return max((b - a for a, b in zip(edges, edges[1:])), default=0.0)
