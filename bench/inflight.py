"""Thousands of predictions in flight on a 2-core machine: the ultra tier at 20 s latency.

The simulator (its own process, so its CPU and GIL are its own) enforces the ultra tier,
5,000 started a minute and 5,000 concurrent, and takes 20 s per prediction. editpipe, set to
the same tier, runs a 10,000-run job with outputs to a local directory. Figures:

- sustained starts per second over the middle 80% of the starts, from the simulator's
  creation timestamps (the first and last 10% are the ramp-up and the drain);
- peak in flight, as the simulator counted it;
- the peak of the summed RSS of every editpipe process: the worker processes, their pool
  children, and this process, which plans, submits and follows the job (sampled every 0.5 s).

editpipe's layout was chosen by measurement (4,000 runs, same tier and latency): 1 worker of
prefork 4 or 6, or 2 workers of 3, with 1, 2 or 3 pumps, all held 80.9-81.1 starts/s, the
limiter's ceiling being 81.7 (ultra less its 2% headroom); 1 × 4 did it in the least memory
(597 MiB peak, against 786 MiB for 1 × 6 and 854 MiB for 2 × 3). Two pumps, so that each
covers the other's hand-over between slices.

Then the bare asyncio loop of ``bench/baseline.py`` (the baseline of ``bench/overhead``)
runs the same 10,000 runs against the same simulator (reset) at the same latency, writing to
a local directory too, and its sustained rate is measured the same way. It runs twice:

- polling on the provider's plain guidance (first poll 2 s after the submit, then 1.5 times
  longer each time), as a loop written without editpipe's idea would: about five polls per
  prediction at 20 s, and one process's CPU is soon the limit. The 1.25 target is checked
  against this run;
- polling on editpipe's own schedule (first poll near the latency seen so far), about one
  poll per prediction. Shown for the record, without a target: when this loop keeps up with
  the tier (79.6/s in one run), no implementation can beat it by more than the tier's
  83.3/s over its rate (≈ 1.05).

    .venv/bin/python bench/inflight.py

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    API_KEY,
    MODEL_ENDPOINT,
    RssSampler,
    baseline_works,
    cpu_seconds,
    created_times,
    editpipe_settings,
    editpipe_workers,
    machine,
    middle_rate,
    simulator,
    submit_and_wait,
    verdict,
    workdir,
    write_feed_manifest,
)
from baseline import run_baseline

from pipeline.embedded import private_redis
from pipeline.settings import TIERS

RUNS, LATENCY_S = 10_000, 20.0
PER_MINUTE, CONCURRENT = TIERS["ultra"]
TARGETS = {"rate": 80.0, "in_flight": 1500, "rss_gib": 1.0, "vs_loop": 1.25}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--workers", type=int, default=1, help="editpipe worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="prefork children per worker")
    parser.add_argument("--pumps", type=int, default=2)
    parser.add_argument("--no-loop", action="store_true", help="skip the bare loop")
    args = parser.parse_args()

    print(f"editpipe in-flight benchmark; {machine()}")
    print(f"parameters: {args.runs:,} runs, simulator latency {LATENCY_S:g} s, tier ultra ({PER_MINUTE:,}/min, "
          f"{CONCURRENT:,} concurrent) on both sides; outputs to a local directory; editpipe: "
          f"{args.workers} worker process(es) × prefork {args.concurrency}, {args.pumps} pumps")
    print(f"targets: ≥ {TARGETS['rate']:.0f} starts/s over the middle 80%, ≥ {TARGETS['in_flight']:,} in flight at "
          f"peak, ≤ {TARGETS['rss_gib']:.0f} GiB RSS of all editpipe processes, ≥ {TARGETS['vs_loop']:.2f} × the bare "
          "loop's sustained rate\n")

    with workdir() as work:
        with private_redis(work / "redis") as redis_url, \
                simulator(latency_s=LATENCY_S, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT) as sim:
            settings = editpipe_settings(redis_url=redis_url, sim=sim, images_per_minute=PER_MINUTE,
                                         max_concurrent=CONCURRENT, EDITPIPE_PUMPS=str(args.pumps))
            manifest = write_feed_manifest(work / "manifest", args.runs, str(work / "out"), name="bench-inflight")
            with editpipe_workers(settings, count=args.workers, concurrency=args.concurrency,
                                  logdir=work / "logs") as procs:
                pids = [p.pid for p in procs]
                cpu_before, sim_cpu_before = cpu_seconds(pids), cpu_seconds([sim.proc.pid])
                with RssSampler([*pids, os.getpid()]) as rss:
                    prepared, status, wall_s = submit_and_wait(settings, manifest, timeout_s=900)
                worker_cpu = cpu_seconds(pids) - cpu_before
                sim_cpu = cpu_seconds([sim.proc.pid]) - sim_cpu_before
            ep = sim.stats()
            predictions = sim.predictions()
            ep_rate = middle_rate(created_times(predictions))

            loops = {} if args.no_loop else {
                learn: run_loop(sim, prepared, work / f"loop-out-{learn}", learn_latency=learn)
                for learn in (False, True)
            }

    rss_gib = rss.peak / 2**30
    checks = {
        "rate": ep_rate >= TARGETS["rate"],
        "in_flight": ep["peak_concurrency"] >= TARGETS["in_flight"],
        "rss": rss_gib <= TARGETS["rss_gib"],
        "complete": status.succeeded == status.total,
        "429": ep["count_429"] == 0,
    }
    print(f"editpipe: {status.succeeded:,} of {status.total:,} succeeded in {wall_s:.0f} s (worker CPU "
          f"{worker_cpu:.0f} s); simulator (CPU {sim_cpu:.0f} s): {ep['count_429']} × 429, {ep['duplicate_submissions']} duplicate "
          f"submits, {ep['polls']:,} polls ({ep['polls'] / max(1, ep['created']):.1f} a prediction; "
          f"{polls_after_warmup(predictions):.2f} a prediction once the first {LATENCY_S:g} s of starts "
          "had shown the latency)")
    print(f"  sustained starts/s (middle 80%)  {ep_rate:8.1f}   target ≥ {TARGETS['rate']:.0f}      "
          f"{verdict(checks['rate'])}")
    print(f"  peak in flight                   {ep['peak_concurrency']:8,}   target ≥ {TARGETS['in_flight']:,}   "
          f"{verdict(checks['in_flight'])}")
    print(f"  peak RSS, all editpipe processes {rss_gib:8.2f}   GiB, target ≤ {TARGETS['rss_gib']:.0f}  "
          f"{verdict(checks['rss'])}  ({rss.peak / 2**20:.0f} MiB)")
    cap = PER_MINUTE / 60
    for learn, (loop, loop_cpu, loop_sim_cpu, loop_stats, loop_rate) in sorted(loops.items()):
        schedule = "editpipe's poll schedule (first poll near the latency seen)" if learn else \
            "the provider's plain poll schedule (2 s, then ×1.5)"
        checks[f"loop_complete_{learn}"] = loop.failed == 0
        print(f"bare loop, {schedule}: {loop.succeeded:,} succeeded, {loop.failed} failed"
              + (f" (first errors: {loop.errors})" if loop.errors else "")
              + f" in {loop.wall_s:.0f} s (its CPU {loop_cpu:.0f} s, {loop_cpu / loop.wall_s:.0%} of a core); "
              f"simulator (CPU {loop_sim_cpu:.0f} s): {loop_stats['count_429']} × 429, peak in flight {loop_stats['peak_concurrency']:,}, "
              f"{loop_stats['polls']:,} polls ({loop_stats['polls'] / max(1, loop_stats['created']):.1f} a prediction)")
        print(f"  sustained starts/s (middle 80%)  {loop_rate:8.1f}")
        ratio = ep_rate / loop_rate if loop_rate else float("inf")
        if learn:
            print(f"  editpipe / this loop             {ratio:8.2f}   (no target: the tier caps any ratio "
                  f"against this loop at {cap:.1f} / {loop_rate:.1f} = {cap / loop_rate:.2f})")
        else:
            checks["vs_loop"] = ratio >= TARGETS["vs_loop"]
            # No implementation starts faster than the tier: when this loop comes within
            # 1.25 × of it, the target cannot be met in this run, and the line says so.
            bound = cap / loop_rate if loop_rate else float("inf")
            print(f"  editpipe / this loop             {ratio:8.2f}   target ≥ {TARGETS['vs_loop']:.2f}   "
                  f"{verdict(checks['vs_loop'])}"
                  + (f"  (out of reach in this run: the tier's {cap:.1f}/s is {bound:.2f} × this loop's rate)"
                     if bound < TARGETS["vs_loop"] else ""))
    ok = all(checks.values())
    print("\nevery target met" if ok else "\na target was missed")
    return 0 if ok else 1


def polls_after_warmup(predictions: list[dict]) -> float:
    """Polls a prediction, for those created once the first predictions had completed (the
    ones before were checked on the provider's plain schedule, the latency unknown)."""
    created = sorted((datetime.fromisoformat(p["created_at"]).timestamp(), p["polls"]) for p in predictions)
    later = [polls for at, polls in created if at >= created[0][0] + LATENCY_S * 1.5]
    return sum(later) / len(later) if later else float("nan")


def run_loop(sim, prepared, output: Path, *, learn_latency: bool):
    """The bare loop on the same runs, the simulator reset first: (outcome, its CPU seconds,
    the simulator's CPU seconds meanwhile, the simulator's figures, sustained starts/s)."""
    sim.reset()
    cpu, sim_cpu = time.process_time(), cpu_seconds([sim.proc.pid])
    loop = run_baseline(baseline_works(prepared), base_url=sim.base_url, api_key=API_KEY, endpoint=MODEL_ENDPOINT,
                        output=str(output), per_minute=PER_MINUTE, max_concurrent=CONCURRENT,
                        learn_latency=learn_latency)
    cpu, sim_cpu = time.process_time() - cpu, cpu_seconds([sim.proc.pid]) - sim_cpu
    return loop, cpu, sim_cpu, sim.stats(), middle_rate(created_times(sim.predictions()))


if __name__ == "__main__":
    sys.exit(main())
