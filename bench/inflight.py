"""Thousands of predictions in flight on a 2-core machine: the ultra tier at 60 s latency.

The simulator (its own process, so its CPU and GIL are its own) enforces the ultra tier as
``pipeline/configs/tiers.yaml`` has it (5,000 started a minute, 10,000 concurrent) and takes
60 s per prediction. editpipe, set to the same tier, runs a 10,000-run job with outputs to a
local directory (in /dev/shm, a tmpfs, where there is one, so that neither side waits on a
disk other work shares), finding completed predictions by polling (see "Polling, not
webhooks").
Figures:

- sustained starts per second over the middle 80% of the starts, from the simulator's
  creation timestamps (the first and last 10% are the ramp-up and the drain);
- peak in flight, as the simulator counted it (at 60 s, 60 × the start rate: about 4,900;
  the 10,000 cap does not bind);
- the peak of the summed RSS of every editpipe process: the worker processes, their pool
  children, and this process, which plans, submits and follows the job (sampled every 0.5 s);
- CPU per run: the user + system seconds of the worker processes and their pool children
  (live ones, and any that exited and were waited for) over the job, from the submit to the
  finalized job, over the number of runs.

Then the bare asyncio loop of ``bench/baseline.py`` (the baseline of ``bench/overhead``)
runs the same 10,000 runs against the same simulator (reset) at the same latency, writing to
a local directory too; its CPU per run is this process's CPU over its run (nothing else runs
in this process meanwhile) over the runs. It runs twice:

- polling on the provider's plain guidance (first poll 2 s after the submit, then 1.5 times
  longer each time, at most 30 s apart): about seven polls per prediction at 60 s, as a loop
  written without editpipe's idea would. The CPU target is checked against this run;
- polling on editpipe's own schedule (the first poll just after the latency seen so far;
  before any is known, spaced by how long the oldest prediction has run), for the record
  (``--no-learned-loop`` skips it): the same requests as editpipe, so what is left between
  the two is what editpipe's durability costs, and the asyncio loop's own costs.

Both are measured in the same run as editpipe. CPU time, unlike wall time, changes little
with other work on the machine, with one exception that works against editpipe: a loop
starved of CPU polls late, so less often (1.9 polls a prediction instead of about seven,
at a load average of 10), and its CPU per run is lower on a busy machine. The start rate is
only meaningful on a quiet one: the load average at the start is printed.

Polling, not webhooks: with ``EDITPIPE_WEBHOOK_URL`` set, the simulator POSTs a signed
webhook per finished prediction to ``editpipe webhook-server``, which asks the provider for
the prediction once and sends a collect message; the poll stays as the fallback. That is
optional per deployment (the provider must reach the server), so this bench measures the
path every deployment has: polling alone.

    .venv/bin/python bench/inflight.py

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import collections
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

import redis

from pipeline.embedded import private_redis
from pipeline.settings import TIERS

RUNS, LATENCY_S = 10_000, 60.0
PER_MINUTE, CONCURRENT = TIERS["ultra"]
TIER_RATE = PER_MINUTE / 60
TARGETS = {"rate": 0.98 * TIER_RATE, "in_flight": 4500, "rss_gib": 1.0, "cpu_vs_loop": 0.5}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--workers", type=int, default=1, help="editpipe worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="prefork children per worker")
    parser.add_argument("--pumps", type=int, default=2)
    parser.add_argument("--no-loop", action="store_true", help="skip the bare loop (no CPU target then)")
    parser.add_argument("--top-commands", type=int, default=6, help="how many Redis commands to list per run")
    parser.add_argument("--no-learned-loop", action="store_true",
                        help="skip the bare loop on the latency-aware schedule (the record-only run)")
    args = parser.parse_args()

    print(f"editpipe in-flight benchmark; {machine()}")
    print(f"parameters: {args.runs:,} runs, simulator latency {LATENCY_S:g} s, tier ultra ({PER_MINUTE:,}/min, "
          f"{CONCURRENT:,} concurrent) on both sides; completions found by polling; outputs to a local directory (tmpfs); "
          f"editpipe: {args.workers} worker process(es) × prefork {args.concurrency}, {args.pumps} pumps")
    print(f"targets: ≥ {TARGETS['rate']:.1f} starts/s over the middle 80% (98% of the tier's {TIER_RATE:.1f}), "
          f"≥ {TARGETS['in_flight']:,} in flight at peak, ≤ {TARGETS['rss_gib']:.0f} GiB RSS of all editpipe "
          f"processes, editpipe's worker CPU per run ≤ {TARGETS['cpu_vs_loop']:.1f} × the bare loop's (provider's "
          "plain poll schedule)\n", flush=True)

    # In memory where there is a tmpfs: 40,000 output files on a shared disk made both
    # sides' figures depend on other work's I/O.
    with workdir(under="/dev/shm" if os.path.isdir("/dev/shm") else None) as work:
        with private_redis(work / "redis") as redis_url, \
                simulator(latency_s=LATENCY_S, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT) as sim:
            settings = editpipe_settings(redis_url=redis_url, sim=sim, images_per_minute=PER_MINUTE,
                                         max_concurrent=CONCURRENT, EDITPIPE_PUMPS=str(args.pumps))
            manifest = write_feed_manifest(work / "manifest", args.runs, str(work / "out"), name="bench-inflight")
            with editpipe_workers(settings, count=args.workers, concurrency=args.concurrency,
                                  logdir=work / "logs") as procs:
                pids = [p.pid for p in procs]
                cpu_before, sim_cpu_before = cpu_seconds(pids), cpu_seconds([sim.proc.pid])
                own_before = time.process_time()
                commands_before = redis_commands(redis_url)
                with RssSampler([*pids, os.getpid()]) as rss:
                    prepared, status, wall_s = submit_and_wait(settings, manifest, timeout_s=900)
                worker_cpu = cpu_seconds(pids) - cpu_before
                sim_cpu = cpu_seconds([sim.proc.pid]) - sim_cpu_before
                own_cpu = time.process_time() - own_before
                commands = redis_commands(redis_url)
                commands.subtract(commands_before)
            ep = sim.stats()
            predictions = sim.predictions()
            ep_rate = middle_rate(created_times(predictions))
            runs = status.total
            ep_cpu_ms = 1000 * worker_cpu / max(1, runs)
            rss_gib = rss.peak / 2**30
            checks = {
                "rate": ep_rate >= TARGETS["rate"],
                "in_flight": ep["peak_concurrency"] >= TARGETS["in_flight"],
                "rss": rss_gib <= TARGETS["rss_gib"],
                "complete": status.succeeded == status.total,
                "429": ep["count_429"] == 0,
            }
            print(f"editpipe: {status.succeeded:,} of {runs:,} succeeded in {wall_s:.0f} s; simulator (CPU {sim_cpu:.0f} s): "
                  f"{ep['count_429']} × 429, {ep['duplicate_submissions']} duplicate submits, {ep['polls']:,} polls "
                  f"({ep['polls'] / max(1, ep['created']):.2f} a prediction; {polls_after_warmup(predictions):.2f} a "
                  f"prediction once the first {LATENCY_S:g} s of starts had shown the latency)")
            print(f"  sustained starts/s (middle 80%)  {ep_rate:8.1f}   target ≥ {TARGETS['rate']:.1f}    "
                  f"{verdict(checks['rate'])}  ({ep_rate / TIER_RATE:.1%} of the tier)")
            print(f"  peak in flight                   {ep['peak_concurrency']:8,}   target ≥ {TARGETS['in_flight']:,}   "
                  f"{verdict(checks['in_flight'])}")
            print(f"  peak RSS, all editpipe processes {rss_gib:8.2f}   GiB, target ≤ {TARGETS['rss_gib']:.0f}  "
                  f"{verdict(checks['rss'])}  ({rss.peak / 2**20:.0f} MiB)")
            print(f"  worker CPU per run               {ep_cpu_ms:8.2f}   ms  ({worker_cpu:.1f} s of CPU for {runs:,} runs; "
                  f"this process, planning excluded, following the job: {own_cpu:.1f} s)")
            top = ", ".join(f"{name} {calls / max(1, runs):.1f}" for name, calls in commands.most_common(args.top_commands))
            print(f"  Redis commands per run           {commands.total() / max(1, runs):8.1f}   ({top}; commands "
                  "inside scripts included, this process's too)", flush=True)

            schedules = [] if args.no_loop else [False] if args.no_learned_loop else [False, True]
            for learn in schedules:
                loop, loop_cpu, loop_sim_cpu, loop_stats, loop_rate = run_loop(
                    sim, prepared, work / f"loop-out-{learn}", learn_latency=learn)
                schedule = "editpipe's poll schedule (first poll just after the latency seen)" if learn else \
                    "the provider's plain poll schedule (2 s, then ×1.5, at most 30 s apart)"
                checks[f"loop_complete_{learn}"] = loop.failed == 0
                loop_cpu_ms = 1000 * loop_cpu / max(1, runs)
                print(f"bare loop, {schedule}: {loop.succeeded:,} succeeded, {loop.failed} failed"
                      + (f" (first errors: {loop.errors})" if loop.errors else "")
                      + f" in {loop.wall_s:.0f} s; simulator (CPU {loop_sim_cpu:.0f} s): {loop_stats['count_429']} × 429, "
                      f"peak in flight {loop_stats['peak_concurrency']:,}, {loop_stats['polls']:,} polls "
                      f"({loop_stats['polls'] / max(1, loop_stats['created']):.2f} a prediction)")
                print(f"  sustained starts/s (middle 80%)  {loop_rate:8.1f}")
                print(f"  its CPU per run                  {loop_cpu_ms:8.2f}   ms  ({loop_cpu:.1f} s of CPU, "
                      f"{loop_cpu / loop.wall_s:.0%} of a core)")
                ratio = ep_cpu_ms / loop_cpu_ms if loop_cpu_ms else float("inf")
                if learn:
                    print(f"  editpipe's CPU per run / this    {ratio:8.2f}   (no target)")
                else:
                    checks["cpu_vs_loop"] = ratio <= TARGETS["cpu_vs_loop"]
                    print(f"  editpipe's CPU per run / this    {ratio:8.2f}   target ≤ {TARGETS['cpu_vs_loop']:.2f}   "
                          f"{verdict(checks['cpu_vs_loop'])}", flush=True)
    ok = all(checks.values())
    print("\nevery target met" if ok else "\na target was missed: " + ", ".join(k for k, v in checks.items() if not v))
    return 0 if ok else 1


def redis_commands(url: str) -> collections.Counter:
    """Calls of each command Redis has served so far (``INFO commandstats``)."""
    client = redis.Redis.from_url(url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return collections.Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})


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
    works = baseline_works(prepared)
    cpu, sim_cpu = time.process_time(), cpu_seconds([sim.proc.pid])
    loop = run_baseline(works, base_url=sim.base_url, api_key=API_KEY, endpoint=MODEL_ENDPOINT,
                        output=str(output), per_minute=PER_MINUTE, max_concurrent=CONCURRENT,
                        learn_latency=learn_latency)
    cpu, sim_cpu = time.process_time() - cpu, cpu_seconds([sim.proc.pid]) - sim_cpu
    return loop, cpu, sim_cpu, sim.stats(), middle_rate(created_times(sim.predictions()))


if __name__ == "__main__":
    sys.exit(main())
