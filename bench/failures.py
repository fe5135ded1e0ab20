"""Failure codes: one job against a simulator that fails 15% of predictions with code 5000
(an internal error: "try again later") and refuses every twentieth run for moderation
(code 1200), through real Celery workers, a private Redis and a local output folder.

Everything printed is measured from what the simulator and the job's records hold:
- runs a code-5000 failure met, and how many of them succeeded on a later submit (target: all);
- the moderated runs, and how many ended ``failed`` with code 1200 and ``error_kind``
  ``moderation``; any other failed run (target: exactly the moderated runs failed, each once
  submitted);
- predictions billed against succeeded runs, and the ledger against the bill (to the cent).

    .venv/bin/python bench/failures.py [--runs 400] [--fail-rate 0.15] [--seed 1]

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    editpipe_settings,
    editpipe_workers,
    machine,
    read_jsonl,
    simulator,
    submit_and_wait,
    verdict,
    workdir,
)

from pipeline.embedded import private_redis  # noqa: E402

PER_MINUTE, CONCURRENT, LATENCY_S = 1200, 60, 2.0
WORKERS, CONCURRENCY = 2, 4
MODERATED_EVERY = 20
MARKER = "[sim:fail:1200]"


def write_manifest(directory: Path, runs: int, output: str) -> Path:
    """A feed of ``runs`` rows; every ``MODERATED_EVERY``-th title carries the moderation marker
    (the title is in the prompt)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "feed.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "image_url", "title"])
        for i in range(runs):
            title = f"item {i}" + (f" {MARKER}" if i % MODERATED_EVERY == 0 else "")
            writer.writerow([f"sku-{i:06d}", f"https://cdn.example.com/products/{i:06d}.jpg", title])
    path = directory / "manifest.yaml"
    path.write_text(
        f"version: 1\nname: failures\noutput: {output}\n"
        "catalog:\n  feed: feed.csv\n  id: sku\n  images: [image_url]\n  vars: [title]\n"
        "prompts:\n  - id: editorial\n    text: An editorial photograph of {title}, warm light.\n"
    )
    return path



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--fail-rate", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="seconds the job may take")
    args = parser.parse_args()

    print(f"editpipe failure-codes benchmark; {machine()}")
    print(f"parameters: {args.runs} runs; simulator {LATENCY_S:g} s latency, {PER_MINUTE}/min, {CONCURRENT} at "
          f"once, {args.fail_rate:.0%} of predictions failed with code 5000, every {MODERATED_EVERY}th run "
          f"moderated (code 1200); {WORKERS} workers × {CONCURRENCY}; seed {args.seed}")
    print("targets: every run a code-5000 failure met succeeds later; exactly the moderated runs fail, each "
          "with code 1200 and kind moderation, submitted once; billed = succeeded runs; ledger = bill\n")

    with workdir() as work, private_redis(work / "redis") as redis_url:
        with simulator(latency_s=LATENCY_S, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT) as sim:
            sim.configure(fail_rate=args.fail_rate, fail_code=5000, jitter_s=LATENCY_S / 3, seed=args.seed)
            settings = editpipe_settings(redis_url=redis_url, sim=sim, images_per_minute=PER_MINUTE,
                                         max_concurrent=CONCURRENT)
            manifest = write_manifest(work / "manifest", args.runs, str(work / "out"))
            with editpipe_workers(settings, count=WORKERS, concurrency=CONCURRENCY, logdir=work / "logs"):
                _, status, wall_s = submit_and_wait(settings, manifest, timeout_s=args.timeout)
            predictions = sim.predictions()
            stats = sim.stats()
        job_dir = work / "out" / "jobs" / status.id
        return print_figures(args, status, wall_s, read_jsonl(job_dir / "results.jsonl"),
                             read_jsonl(job_dir / "ledger.jsonl"), predictions, stats)


def print_figures(args, status, wall_s: float, results: list[dict], ledger: list[dict], predictions: list[dict],
                  stats: dict) -> int:
    moderated = {r["run_key"] for r in results if r["status"] == "failed" and r.get("code") == 1200
                 and r.get("error_kind") == "moderation"}
    planned_moderated = -(-args.runs // MODERATED_EVERY)
    submits = Counter(p["run_key"] for p in predictions)
    hiccups = [p for p in predictions if p.get("code") == 5000]
    met = {p["run_key"] for p in hiccups} - moderated
    succeeded = {r["run_key"] for r in results if r["status"] == "succeeded"}
    other_failed = [r for r in results if r["status"] == "failed" and r["run_key"] not in moderated]
    billed = [p for p in predictions if p["billed"]]
    ledger_total = sum((Decimal(line["cost_usd"]) for line in ledger), Decimal(0))
    bill = Decimal(stats["billed_usd"])

    print(f"job {status.id}: {status.status} in {wall_s:.0f} s; {len(results)} result lines of {args.runs}: "
          + ", ".join(f"{n} {s}" for s, n in sorted(Counter(r["status"] for r in results).items())))
    print(f"provider: {stats['created']} predictions, {len(hiccups)} failed with code 5000 "
          f"({len(hiccups) / max(1, stats['created']):.1%}); most predictions for one run: {max(submits.values())}")
    print(f"runs a code-5000 failure met: {len(met)}, succeeded on a later submit: {len(met & succeeded)}  "
          f"{verdict(met <= succeeded)}")
    once = all(submits[key] == 1 for key in moderated)
    print(f"moderated runs: {planned_moderated} planned, {len(moderated)} failed with code 1200 (kind moderation), "
          f"each submitted once: {once}; other failed runs: {len(other_failed)}  "
          f"{verdict(len(moderated) == planned_moderated and once and not other_failed)}")
    for line in other_failed[:5]:
        print(f"  {line['run_key'][:12]} {line.get('error_kind')}: {line['error']}")
    billed_ok = len(billed) == len(succeeded) and {p["run_key"] for p in billed} == succeeded
    print(f"billed predictions: {len(billed)} for {len(succeeded)} succeeded runs; ledger ${ledger_total} vs bill "
          f"${bill}  {verdict(billed_ok and ledger_total == bill)}")
    ok = (status.done and met <= succeeded and len(moderated) == planned_moderated and once and not other_failed
          and billed_ok and ledger_total == bill)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
