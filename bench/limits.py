"""Whether the account's limits hold across worker processes, as the provider counts them.

One simulator (its own process) enforcing 120 images a minute and 10 concurrent, latency
1 s. First editpipe: 4 worker processes, configured with the same limits
(``WAVESPEED_IMAGES_PER_MINUTE=120``, ``WAVESPEED_MAX_CONCURRENT=10``), run a 400-run job.
The simulator's own counters give the most starts in any 60 s window, the peak of
predictions in flight and its 429s; its creation timestamps give the rate sustained while
work was queued (all 400 runs are queued from the submit, so: first start to last).

Then plain Celery on 4 worker processes of a tiny app (``bench/celery_rate.py``) whose task
only submits, with ``rate_limit='120/m'``, sent the same 400 runs. For this side the
simulator's limits are lifted so it counts every start instead of refusing the excess; the
figure is the overshoot ratio, most starts in any 60 s / 120.

    .venv/bin/python bench/limits.py

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from celery import Celery

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    API_KEY,
    MODEL_ENDPOINT,
    baseline_works,
    busiest_window,
    celery_workers,
    created_times,
    editpipe_settings,
    editpipe_workers,
    machine,
    overall_rate,
    simulator,
    submit_and_wait,
    verdict,
    wait_workers_ready,
    workdir,
    write_feed_manifest,
)

from pipeline.embedded import private_redis

PER_MINUTE, CONCURRENT = 120, 10
RUNS, LATENCY_S, WORKERS = 400, 1.0, 4
TARGET_SUSTAINED = 0.95


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--concurrency", type=int, default=2, help="prefork children per worker")
    args = parser.parse_args()
    bench = Path(__file__).resolve().parent

    print(f"editpipe limits benchmark; {machine()}")
    print(f"parameters: {args.runs} runs, simulator latency {LATENCY_S:g} s enforcing {PER_MINUTE}/min and "
          f"{CONCURRENT} concurrent; {WORKERS} worker processes each side (prefork {args.concurrency}); "
          f"editpipe WAVESPEED_IMAGES_PER_MINUTE={PER_MINUTE}, WAVESPEED_MAX_CONCURRENT={CONCURRENT}")
    print(f"targets: editpipe ≤ {PER_MINUTE} starts in any 60 s, ≤ {CONCURRENT} in flight, 0 × 429, "
          f"≥ {TARGET_SUSTAINED:.0%} of {PER_MINUTE}/min sustained while work is queued\n")

    with workdir() as work:
        with private_redis(work / "redis") as redis_url, \
                simulator(latency_s=LATENCY_S, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT) as sim:
            settings = editpipe_settings(redis_url=redis_url, sim=sim, images_per_minute=PER_MINUTE,
                                         max_concurrent=CONCURRENT)
            manifest = write_feed_manifest(work / "manifest", args.runs, str(work / "out"), name="bench-limits")
            with editpipe_workers(settings, count=WORKERS, concurrency=args.concurrency, logdir=work / "logs"):
                prepared, status, wall_s = submit_and_wait(settings, manifest, timeout_s=args.runs * 60 / PER_MINUTE + 120)
            ep = sim.stats()
            ep_times = created_times(sim.predictions())

            sim.reset()
            sim.configure(images_per_minute=None, max_concurrent=None)
            env = dict(os.environ, BENCH_BROKER_URL=redis_url, BENCH_SIM_URL=sim.base_url, BENCH_API_KEY=API_KEY)
            with celery_workers(env, count=WORKERS, concurrency=args.concurrency, logdir=work / "logs",
                                app="celery_rate", cwd=bench) as procs:
                wait_workers_ready(procs, work / "logs")
                sender = Celery("sender", broker=redis_url)
                for w in baseline_works(prepared):
                    sender.send_task("bench.submit", (MODEL_ENDPOINT, w.payload, w.run_key), queue="celery-rate")
                deadline = time.monotonic() + args.runs / (WORKERS * PER_MINUTE / 60) * 2 + 60
                while sim.stats()["created"] < args.runs and time.monotonic() < deadline:
                    time.sleep(0.5)
            plain = sim.stats()
            plain_times = created_times(sim.predictions())

    sustained = overall_rate(ep_times) * 60 / PER_MINUTE
    checks = {
        "starts": ep["max_starts_60s"] <= PER_MINUTE,
        "concurrency": ep["peak_concurrency"] <= CONCURRENT,
        "429": ep["count_429"] == 0,
        "sustained": sustained >= TARGET_SUSTAINED,
        "complete": status.succeeded == status.total,
    }
    print(f"editpipe: {status.succeeded} of {status.total} succeeded in {wall_s:.0f} s; simulator billed "
          f"{ep['billed_count']}, {ep['duplicate_submissions']} duplicate submits")
    print(f"  most starts in any 60 s  {ep['max_starts_60s']:>6}      target ≤ {PER_MINUTE}    "
          f"{verdict(checks['starts'])}  (recomputed from timestamps: {busiest_window(ep_times)})")
    print(f"  peak concurrency         {ep['peak_concurrency']:>6}      target ≤ {CONCURRENT}     "
          f"{verdict(checks['concurrency'])}")
    print(f"  429 answers              {ep['count_429']:>6}      target 0       {verdict(checks['429'])}")
    print(f"  sustained rate           {overall_rate(ep_times) * 60:>6.1f}/min = {sustained:.1%} of {PER_MINUTE}/min, "
          f"target ≥ {TARGET_SUSTAINED:.0%}   {verdict(checks['sustained'])}")
    print(f"plain Celery rate_limit='{PER_MINUTE}/m', {WORKERS} workers: {plain['created']} started "
          f"(simulator limits lifted)")
    print(f"  most starts in any 60 s  {plain['max_starts_60s']:>6}      overshoot ratio "
          f"{plain['max_starts_60s'] / PER_MINUTE:.2f} × the limit  (peak concurrency {plain['peak_concurrency']}, "
          f"{overall_rate(plain_times) * 60:.0f}/min sustained)")
    ok = all(checks.values())
    print("\nevery target met" if ok else "\na target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
