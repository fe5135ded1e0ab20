"""What the metrics cost the hot path, and what a scrape costs.

The counts are taken inside the scripts the fleet runs anyway (no extra round trip), so the
cost is Redis CPU inside one script call. Measured on a private redis-server:
- a start (``AccountLimits.try_start``, ``limits_start.lua``) with and without its count
  (``counts_key``), interleaved in blocks so that load changes hit both sides alike; the
  figure is Redis's own time per script call (``INFO commandstats``: the client's and the
  network's time are the same on both sides), the median of the blocks, and their
  difference. Target: the count adds at most 25 µs of Redis time a start (at the ultra
  tier's 83 starts/s, 0.2% of one core);
- one ``Metrics.snapshot`` (a scrape, or a frame of ``editpipe top``) over 50 active jobs.
  Target: under 50 ms.

    .venv/bin/python bench/metrics_cost.py

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import machine, verdict, workdir

from pipeline.embedded import private_redis
from pipeline.state import Connection, State, keys

TARGET_START_US = 25.0
TARGET_SNAPSHOT_MS = 50.0


def start_call(state: State, prefix: str, counted: bool):
    """One ``limits_start.lua`` call as ``AccountLimits.try_start`` makes it, at limits so high
    that every call is granted (the costliest path: a token and a lease are taken)."""
    backend = state.limits
    part = lambda name: keys.limit_part(prefix, name)  # noqa: E731
    n = 0

    def call() -> int:
        nonlocal n
        n += 1
        return backend.start(rate_key=part("rate"), last_key=part("rate:last"), lease_key=part("leases"),
                             throttle_key=part("throttle"), holder=f"h{n}", limit=10**9, lease_us=60_000_000,
                             interval_us=1.0, catch_up_us=0.0, recovery_us=30_000_000, busy_retry_us=500_000,
                             counts_key=part("counts") if counted else None)

    return call


def server_us(state: State, call, n: int) -> float:
    """Redis's own time per call (``INFO commandstats``: inside the script, not the network
    or the client, which the count does not change), over ``n`` calls."""
    r = state.metrics._r  # noqa: SLF001 - a bench reads the server's own statistics
    r.config_resetstat()
    for _ in range(n):
        call()
    stats = r.info("commandstats")
    scripts = [v for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval")]
    return sum(v["usec"] for v in scripts) / sum(v["calls"] for v in scripts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=20)
    parser.add_argument("--block", type=int, default=1000)
    args = parser.parse_args()
    print(machine())
    with workdir() as work, private_redis(work / "redis") as url:
        state = State(Connection.from_url(url))
        plain, counted = start_call(state, "ep:limits:bench-plain", False), start_call(state, "ep:limits:bench-counted", True)
        plain(), counted()  # scripts loaded
        sides: dict[str, list[float]] = {"without": [], "with": []}
        for i in range(args.blocks):  # alternating which side goes first
            for side in (("without", "with") if i % 2 == 0 else ("with", "without")):
                sides[side].append(server_us(state, plain if side == "without" else counted, args.block))
        without, with_count = statistics.median(sides["without"]), statistics.median(sides["with"])
        extra = with_count - without
        print(f"start (limits_start.lua), Redis time per call, {args.blocks} × {args.block} calls a side: "
              f"{without:.1f} µs without the count, {with_count:.1f} µs with it: +{extra:.1f} µs "
              f"(target ≤ {TARGET_START_US:.0f}) {verdict(extra <= TARGET_START_US)}")

        for i in range(50):
            job_id = f"bench-{i:02d}"
            state.jobs.create(job_id, name="bench", output="/tmp/out", runs=[], total=1000,
                              estimated_usd=Decimal("100"), budget_usd=Decimal("50"), created_at="2026-01-01T00:00:00Z")
            state.jobs.mark_running(job_id)
            state.fair.push(job_id, 1000)
        times = []
        for _ in range(50):
            t = time.perf_counter()
            snap = state.metrics.snapshot()
            times.append((time.perf_counter() - t) * 1000)
        took = statistics.median(times)
        print(f"snapshot over {len(snap.jobs)} active jobs: {took:.1f} ms median of 50 "
              f"(target < {TARGET_SNAPSHOT_MS:.0f}) {verdict(took < TARGET_SNAPSHOT_MS)}")
        return 0 if extra <= TARGET_START_US and took < TARGET_SNAPSHOT_MS else 1


if __name__ == "__main__":
    sys.exit(main())
