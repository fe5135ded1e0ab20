"""What editpipe's durability costs: its wall time over a bare asyncio + httpx + boto3 loop
(``bench/baseline.py``) doing the same requests, at simulator latency 0.

Both sides run the same 2,000 planned runs against the same simulator (its own process,
no account limits, latency 0) and write to moto's S3 server (its own process; a fresh one
per side, so neither finds the other's objects there). For each run the loop submits,
polls on editpipe's schedule, downloads the output and puts the output and a JSON sidecar.
editpipe does that and everything it guarantees besides: a Redis claim before each submit,
the prediction id stored the moment the submit answers, budget reservations, an atomic
charge per run with the run's run-index line (written to storage in batches of 500, see
``pipeline/run_index.py``), and the job's records, index and report at finalize.

The simulator's outputs are 256 px on their longer side by default, no bigger than a report
thumbnail, so editpipe shows them as they are and writes two objects per run, as the loop
does. With ``--image-long-side 1024`` (closer to the real API's outputs) editpipe also makes
and writes a thumbnail per run, work the loop does not do; both sides then move bigger files.

editpipe's limits are set far above what either side reaches (100,000 a minute, 5,000 in
flight), since this measures overhead, not limits. Its wall time runs from the submit (job
recorded, first message sent) to the finalized job; planning is excluded (``bench/plan.py``
measures it). The loop's runs from its first submit to its last put.

    .venv/bin/python bench/overhead.py

Exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    API_KEY,
    MODEL_ENDPOINT,
    baseline_works,
    count_objects,
    cpu_seconds,
    editpipe_settings,
    editpipe_workers,
    machine,
    moto_server,
    simulator,
    submit_and_wait,
    verdict,
    workdir,
    write_feed_manifest,
)
from baseline import run_baseline

from pipeline.embedded import private_redis

TARGET_RATIO = 1.0
RUNS = 2000
LATENCY_S = 0.0
UNBINDING_PER_MINUTE, UNBINDING_CONCURRENT = 100_000, 5_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--workers", type=int, default=2, help="editpipe worker processes")
    parser.add_argument("--concurrency", type=int, default=4, help="prefork children per worker")
    parser.add_argument("--pumps", type=int, default=2)
    parser.add_argument("--image-long-side", type=int, default=None,
                        help="the simulator's output size in px (its default: 256)")
    args = parser.parse_args()

    print(f"editpipe overhead benchmark; {machine()}")
    print(f"parameters: {args.runs:,} runs, simulator latency {LATENCY_S:g} s (own process, no limits), "
          f"outputs {args.image_long_side or 256} px to moto's S3 server (own process, fresh per side); "
          f"editpipe: {args.workers} workers × "
          f"prefork {args.concurrency}, {args.pumps} pumps, limits {UNBINDING_PER_MINUTE:,}/min and "
          f"{UNBINDING_CONCURRENT:,} in flight (not binding); loop: 64 requests at once, 16 put threads")
    print(f"target: editpipe's wall time / the loop's ≤ {TARGET_RATIO:.2f}\n")

    with workdir() as work:
        with (private_redis(work / "redis") as redis_url,
              simulator(latency_s=LATENCY_S, image_long_side=args.image_long_side) as sim):
            with moto_server() as s3:
                s3_endpoint = s3.url
                boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket="editpipe-out")
                settings = editpipe_settings(
                    redis_url=redis_url, sim=sim, images_per_minute=UNBINDING_PER_MINUTE,
                    max_concurrent=UNBINDING_CONCURRENT, s3_endpoint=s3_endpoint, EDITPIPE_PUMPS=str(args.pumps),
                )
                manifest = write_feed_manifest(work / "manifest", args.runs, "s3://editpipe-out/out",
                                               name="bench-overhead")
                with editpipe_workers(settings, count=args.workers, concurrency=args.concurrency,
                                      logdir=work / "logs") as procs:
                    cpu_before = cpu_seconds([p.pid for p in procs]), cpu_seconds([s3.pid])
                    prepared, status, editpipe_s = submit_and_wait(settings, manifest, timeout_s=600)
                    editpipe_cpu = cpu_seconds([p.pid for p in procs]) - cpu_before[0]
                    editpipe_s3_cpu = cpu_seconds([s3.pid]) - cpu_before[1]
                ep_stats = sim.stats()
                ep_objects = count_objects(s3_endpoint, "editpipe-out")
            sim.reset()
            with moto_server() as s3:
                boto3.client("s3", endpoint_url=s3.url).create_bucket(Bucket="baseline-out")
                started = time.process_time(), cpu_seconds([s3.pid])
                loop = run_baseline(baseline_works(prepared), base_url=sim.base_url, api_key=API_KEY,
                                    endpoint=MODEL_ENDPOINT, output="s3://baseline-out/out", s3_endpoint=s3.url,
                                    per_minute=UNBINDING_PER_MINUTE, max_concurrent=UNBINDING_CONCURRENT)
                loop_cpu = time.process_time() - started[0]
                loop_s3_cpu = cpu_seconds([s3.pid]) - started[1]
                loop_objects = count_objects(s3.url, "baseline-out")
            loop_stats = sim.stats()

    ratio = editpipe_s / loop.wall_s
    print(f"editpipe: {status.succeeded:,} of {status.total:,} succeeded ({status.status}); "
          f"simulator billed {ep_stats['billed_count']:,}, {ep_stats['duplicate_submissions']} duplicate submits, "
          f"{ep_stats['polls']:,} polls")
    print(f"  wall time      {editpipe_s:8.1f} s   ({status.total / editpipe_s:.0f} runs/s; "
          f"worker CPU {editpipe_cpu:.1f} s; {ep_objects:,} S3 objects written, S3 server CPU {editpipe_s3_cpu:.1f} s)")
    print(f"bare loop: {loop.succeeded:,} succeeded, {loop.failed} failed"
          + (f" (first errors: {loop.errors})" if loop.errors else "")
          + f"; simulator billed {loop_stats['billed_count']:,}, {loop_stats['polls']:,} polls")
    print(f"  wall time      {loop.wall_s:8.1f} s   ({len(prepared.plan.runs) / loop.wall_s:.0f} runs/s; "
          f"its CPU {loop_cpu:.1f} s; {loop_objects:,} S3 objects written, S3 server CPU {loop_s3_cpu:.1f} s)")
    ok = ratio <= TARGET_RATIO and status.succeeded == status.total and loop.failed == 0
    print(f"\neditpipe / loop   {ratio:8.2f}     target ≤ {TARGET_RATIO:.2f}   {verdict(ok)}")
    print("every target met" if ok else "a target was missed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
