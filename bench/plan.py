"""How long 100,000 runs take to plan and enqueue, and how much memory planning needs.

Two cases, each measured three times, each time in a fresh process so that memory peaks
stay apart (times: the median of the three, all printed; peak RSS: the largest):

- ``inline``: 1,000 inline image sets × 10 prompts × a 10-value matrix;
- ``feed``: a 100,000-row CSV feed (an https URL per row plus one of three local files
  shared by every row, so no 100,000 files need hashing), one prompt using two vars.

Plan time is load + validate + plan + price, as ``editpipe plan`` does it. Enqueue time is
recording the job in a real (private) Redis with ``Jobs.create`` and sending its first
chunk through Celery, as ``submit`` does. Peak RSS is the process's ``ru_maxrss``.

    .venv/bin/python bench/plan.py

Exits 1 when a figure misses its target.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

TARGETS = {"plan_s": 5.0, "enqueue_s": 30.0, "peak_rss_mb": 300.0}
CASES = {
    "inline": "1,000 inline sets × 10 prompts × 10 matrix values",
    "feed": "100,000-row CSV feed × 1 prompt",
}
ROWS = 100_000
# Each case runs this many times, each in a fresh process; times are the median (this VM's
# speed varies by ±20% from one run to the next), peak RSS the largest.
ROUNDS = 3


def write_inline(directory: Path) -> Path:
    Image.new("RGB", (8, 8), "gray").save(directory / "shared.png")
    sets = "".join(
        f"  - id: s{i:04d}\n    images: [https://cdn.example.com/products/{i}.jpg, shared.png]\n"
        f"    vars: {{product: catalog item number {i}}}\n"
        for i in range(1000)
    )
    prompts = "".join(
        f"  - id: p{j}\n    text: Editorial photograph {j} of a model wearing the {{product}}, warm light.\n"
        for j in range(10)
    )
    path = directory / "inline.yaml"
    path.write_text(
        "version: 1\nname: bench-inline\noutput: out\n"
        f"image_sets:\n{sets}prompts:\n{prompts}"
        'matrix:\n  aspect_ratio: ["1:1", "2:3", "3:2", "4:5", "16:9"]\n  resolution: [1k, 2k]\n'
        'output_key: "{image_set}/{prompt}/{aspect_ratio}/{resolution}/{variant}"\n'
    )
    return path


def write_feed(directory: Path) -> Path:
    for i, color in enumerate(("red", "green", "blue")):
        Image.new("RGB", (8, 8), color).save(directory / f"backdrop-{i}.png")
    with (directory / "products.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "image_url", "backdrop", "title", "color"])
        for i in range(ROWS):
            writer.writerow([
                f"sku-{i:06d}",
                f"https://cdn.example.com/products/{i:06d}/front.jpg",
                f"backdrop-{i % 3}.png",
                f"drop earrings, model {i}",
                ("gold", "silver", "rose gold")[i % 3],
            ])
    path = directory / "feed.yaml"
    path.write_text(
        "version: 1\nname: bench-feed\noutput: out\n"
        "catalog:\n  feed: products.csv\n  id: sku\n  images: [image_url, backdrop]\n  vars: [title, color]\n"
        "prompts:\n  - id: editorial\n"
        "    text: A high-end editorial portrait of a model wearing the {color} {title}, warm natural light.\n"
    )
    return path


def measure(manifest: Path, redis_url: str) -> dict:
    """One case, in this process: plan, then enqueue; the figures as a dict."""
    from pipeline.catalog import Sources
    from pipeline.state import State, new_job_id
    from pipeline.ledger import utc_now
    from pipeline.manifest import load_manifest
    from pipeline.modelspec import load_model_specs
    from pipeline.plan import plan_runs
    from pipeline.settings import Settings
    from workers.celery_app import job_enqueuer

    settings = Settings.from_env({"REDIS_URL": redis_url})
    started = time.perf_counter()
    specs = load_model_specs(settings.models_dir)
    manifest_ = load_manifest(manifest, specs, sources=Sources(settings))
    plan = plan_runs(manifest_, specs)
    estimated = plan.estimated_cost(specs)
    plan_s = time.perf_counter() - started
    plan_rss = _max_rss_mb()

    state = State.from_url(redis_url)
    enqueue = job_enqueuer(settings)
    started = time.perf_counter()
    job_id = new_job_id(manifest_.name)
    state.jobs.create(
        job_id,
        name=manifest_.name,
        output=manifest_.output,
        runs=plan.runs,
        total=len(plan.runs),
        estimated_usd=estimated,
        budget_usd=None,
        created_at=utc_now(),
    )
    # What `editpipe submit` sends: one message per job; the runs wait in Redis for the pumps.
    enqueue(job_id)
    enqueue_s = time.perf_counter() - started
    stored = state.runs.planned_count(job_id)
    return {
        "runs": len(plan.runs),
        "stored": stored,
        "skipped_rows": len(plan.skipped_rows),
        "plan_s": plan_s,
        "plan_rss_mb": plan_rss,
        "enqueue_s": enqueue_s,
        "peak_rss_mb": _max_rss_mb(),
    }


def _measure_in_child(case: str, manifest: Path, redis_url: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--case", case, "--manifest", str(manifest), "--redis", redis_url],
        check=True, capture_output=True, text=True,
    ).stdout
    r = json.loads(out)
    assert r["stored"] == r["runs"], r
    return r


def _each(rounds: list[dict], name: str) -> str:
    return "each: " + ", ".join(f"{r[name]:.2f}" for r in rounds)


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _verdict(value: float, target: float) -> str:
    return "ok" if value <= target else "MISSED"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--manifest", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:  # a child: measure one case, answer in JSON
        print(json.dumps(measure(Path(args.manifest), args.redis)))
        return 0

    from pipeline.embedded import private_redis

    print(f"editpipe plan benchmark: python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"targets: plan ≤ {TARGETS['plan_s']:.0f} s, enqueue ≤ {TARGETS['enqueue_s']:.0f} s, "
          f"peak RSS ≤ {TARGETS['peak_rss_mb']:.0f} MB (each case in a fresh process)\n")
    missed = False
    with tempfile.TemporaryDirectory(prefix="editpipe-bench-") as tmp:
        work = Path(tmp)
        (work / "redis").mkdir()
        started = time.perf_counter()
        manifests = {"inline": write_inline(work), "feed": write_feed(work)}
        print(f"inputs written in {time.perf_counter() - started:.1f} s ({work})\n")
        with private_redis(work / "redis") as redis_url:
            for case, manifest in manifests.items():
                rounds = [_measure_in_child(case, manifest, redis_url) for _ in range(ROUNDS)]
                plan_s = statistics.median(r["plan_s"] for r in rounds)
                enqueue_s = statistics.median(r["enqueue_s"] for r in rounds)
                peak = max(r["peak_rss_mb"] for r in rounds)
                r = rounds[0]
                print(f"{case}: {CASES[case]}")
                print(f"  runs          {r['runs']:>9,}" + (f"  ({r['skipped_rows']} rows skipped)" if r["skipped_rows"] else ""))
                print(f"  plan          {plan_s:>9.2f} s   target ≤ {TARGETS['plan_s']:.0f} s    "
                      f"{_verdict(plan_s, TARGETS['plan_s'])}  ({_each(rounds, 'plan_s')})")
                print(f"  enqueue       {enqueue_s:>9.2f} s   target ≤ {TARGETS['enqueue_s']:.0f} s   "
                      f"{_verdict(enqueue_s, TARGETS['enqueue_s'])}  ({_each(rounds, 'enqueue_s')})")
                print(f"  peak RSS      {peak:>9.0f} MB  target ≤ {TARGETS['peak_rss_mb']:.0f} MB  "
                      f"{_verdict(peak, TARGETS['peak_rss_mb'])}  (after planning: {max(r['plan_rss_mb'] for r in rounds):.0f} MB)\n")
                missed |= plan_s > TARGETS["plan_s"] or enqueue_s > TARGETS["enqueue_s"] or peak > TARGETS["peak_rss_mb"]
    print("every target met" if not missed else "a target was missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
