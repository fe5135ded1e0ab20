"""Lost submit answers: one job against a simulator that drops 10% of submit answers after
creating (and billing) the prediction, through real Celery workers, a private Redis and a
local output folder; then ``editpipe reconcile JOB --settle`` against the simulator's bill.

Everything printed is measured from what the simulator and the job's stored records hold:
- dropped answers, and the predictions the provider billed beyond one per run (paid
  duplicates; target: at most 1 in 10 dropped answers);
- runs whose stored prediction is not the one the provider made for that run's key (target 0:
  an adopted prediction never goes to another run);
- the ledger against the bill before and after ``reconcile --settle`` (target: equal to the
  cent after), and what a second ``--settle`` changed (target: nothing).

    .venv/bin/python bench/lost_answers.py [--runs 300] [--drop-rate 0.1] [--seed 1]

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    editpipe_settings,
    editpipe_worker_env,
    editpipe_workers,
    machine,
    read_jsonl,
    simulator,
    submit_and_wait,
    verdict,
    workdir,
    write_feed_manifest,
)

from pipeline.embedded import private_redis  # noqa: E402

PER_MINUTE, CONCURRENT, LATENCY_S = 1200, 40, 2.0
WORKERS, CONCURRENCY = 2, 4
EDITPIPE = str(Path(sys.executable).parent / "editpipe")



def ledger_total(lines: list[dict]) -> Decimal:
    return sum((Decimal(line["cost_usd"]) for line in lines), Decimal(0))


def settle(env: dict[str, str], job_id: str, out: Path) -> tuple[int, str]:
    done = subprocess.run([EDITPIPE, "reconcile", job_id, "--output", str(out), "--settle"], env=env, cwd=ROOT,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)
    return done.returncode, (done.stdout + done.stderr).strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--drop-rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds the job may take")
    args = parser.parse_args()

    print(f"editpipe lost-answers benchmark; {machine()}")
    print(f"parameters: {args.runs} runs; simulator {LATENCY_S:g} s latency, {PER_MINUTE}/min, {CONCURRENT} at once, "
          f"{args.drop_rate:.0%} of submit answers dropped after the prediction was made; {WORKERS} workers × "
          f"{CONCURRENCY}; seed {args.seed}")
    print("targets: paid duplicates ≤ 1 in 10 dropped answers; 0 runs holding another run's prediction; after "
          "reconcile --settle the ledger equals the bill to the cent; a second --settle changes nothing\n")

    with workdir() as work, private_redis(work / "redis") as redis_url:
        with simulator(latency_s=LATENCY_S, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT) as sim:
            sim.configure(drop_rate=args.drop_rate, jitter_s=LATENCY_S / 3, seed=args.seed)
            settings = editpipe_settings(redis_url=redis_url, sim=sim, images_per_minute=PER_MINUTE,
                                         max_concurrent=CONCURRENT)
            out = work / "out"
            manifest = write_feed_manifest(work / "manifest", args.runs, str(out), name="lost")
            with editpipe_workers(settings, count=WORKERS, concurrency=CONCURRENCY, logdir=work / "logs"):
                _, status, wall_s = submit_and_wait(settings, manifest, timeout_s=args.timeout)
            sim.configure(drop_rate=0.0)  # reconcile's own requests are answered
            predictions, stats = sim.predictions(), sim.stats()
            ledger_file = out / "jobs" / status.id / "ledger.jsonl"
            before = read_jsonl(ledger_file)
            env = editpipe_worker_env(settings)
            first_rc, first_out = settle(env, status.id, out)
            after_text = ledger_file.read_text()
            second_rc, second_out = settle(env, status.id, out)
            unchanged = ledger_file.read_text() == after_text
        results = read_jsonl(out / "jobs" / status.id / "results.jsonl")
        return print_figures(args, status, wall_s, results, before, read_jsonl(ledger_file), predictions, stats,
                             (first_rc, first_out), (second_rc, second_out), unchanged)


def print_figures(args, status, wall_s, results, before, after, predictions, stats, first, second,
                  unchanged) -> int:
    dropped = int(stats["dropped_responses"])
    billed = Counter(p["run_key"] for p in predictions if p["billed"])
    duplicates = sum(n - 1 for n in billed.values() if n > 1)
    made_for = {}
    for p in predictions:
        made_for.setdefault(p["id"], p["run_key"])
    swapped = sum(1 for r in results if r.get("prediction_id") and made_for.get(r["prediction_id"]) != r["run_key"])
    bill = Decimal(stats["billed_usd"])
    kinds_before = Counter(line["kind"] for line in before)
    kinds_after = Counter(line["kind"] for line in after)

    print(f"job {status.id}: {status.status} in {wall_s:.0f} s; {len(results)} result lines of {args.runs}: "
          + ", ".join(f"{n} {s}" for s, n in sorted(Counter(r["status"] for r in results).items())))
    print(f"provider: {stats['created']} predictions made, {stats['billed_count']} billed = ${bill}; "
          f"{dropped} submit answers dropped")
    limit = dropped / 10
    print(f"paid duplicates: {duplicates} for {dropped} dropped answers (target ≤ {limit:g})  "
          f"{verdict(duplicates <= limit)}")
    print(f"runs holding a prediction made for another run: {swapped}  {verdict(swapped == 0)}")
    print(f"ledger before settle: ${ledger_total(before)} vs bill ${bill} ({dict(kinds_before)})")
    print(f"reconcile --settle: exit {first[0]}; " + first[1].splitlines()[0] if first[1] else "")
    ok_after = ledger_total(after) == bill
    print(f"ledger after settle: ${ledger_total(after)} vs bill ${bill} ({dict(kinds_after)})  {verdict(ok_after)}")
    print(f"second --settle: exit {second[0]}, ledger unchanged: {unchanged}  {verdict(unchanged)}")
    ok = status.done and duplicates <= limit and swapped == 0 and ok_after and unchanged
    if not ok:
        print(first[1])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
