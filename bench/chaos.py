"""Chaos: one job through workers SIGKILLed at random moments and Redis restarted, against a
simulator that drops answers, answers 5xx and fails predictions; at the production
visibility timeout (nothing here shortens a lease or a timeout).

The parts are real and separate processes: a redis-server with its append-only file on
(restarted on the same port and folder: SIGTERM, a few seconds down, started again), the
simulator (``python -m pipeline.simulator``), and ``celery -A workers worker`` processes in
their own process groups (a kill takes a worker's whole group; the killed worker is started
again a few seconds later, as a supervisor would). Outputs go to a local folder.

Everything printed is measured from what the simulator and storage hold, not from what
editpipe says about itself:
- runs lost: planned runs without a result line, and failed runs without a reason;
- duplicate paid submissions beyond the recorded ``unconfirmed_submit`` lines: for each run,
  the predictions the provider billed beyond the first, less that run's unconfirmed lines;
- ledger minus bill, and how much of it is unconfirmed lines (each at most one price);
- seconds from each fault to the next run the provider saw started (a worker kill: from the
  kill; a Redis restart: from when Redis answered again), while runs were still waiting;
- worker processes that exited on their own (a Redis restart must stop none);
- runs that ended failed on a code the provider calls transient (5000: the simulator's
  failed predictions, which editpipe submits again), and the failed runs by ``error_kind``.

    .venv/bin/python bench/chaos.py [--runs 400] [--faults 6] [--seed 1]

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    created_times,
    editpipe_settings,
    editpipe_worker_env,
    machine,
    read_jsonl,
    simulator,
    verdict,
    workdir,
    write_feed_manifest,
)

from pipeline.embedded import RestartableRedis as RedisServer  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

PER_MINUTE, CONCURRENT, LATENCY_S = 600, 30, 3.0
WORKERS, CONCURRENCY = 3, 4
DROP, ERROR_5XX, FAIL = 0.03, 0.03, 0.03
REDIS_DOWN_S = 3.0
TARGET_FAULT_TO_START_S = 30.0


class Fleet:
    """Worker processes, each in its own process group; one can be killed and replaced."""

    def __init__(self, settings: Settings, logdir: Path):
        self.env = editpipe_worker_env(settings)
        self.logdir = logdir
        self.procs: list[subprocess.Popen] = []
        self.started = 0

    def start_one(self) -> subprocess.Popen:
        n = self.started
        self.started += 1
        with open(self.logdir / f"worker-{n}.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO",
                 "--concurrency", str(CONCURRENCY), "-n", f"chaos-{n}-{uuid.uuid4().hex[:6]}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    def kill(self, proc: subprocess.Popen) -> None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        self.procs.remove(proc)

    def exited_by_themselves(self) -> list[subprocess.Popen]:
        return [p for p in self.procs if p.poll() is not None]

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def job_done(redis_url: str, job_id: str) -> bool | None:
    """Whether the job is finalized; None when Redis does not answer (it is restarting)."""
    from pipeline.state import State

    try:
        return State.from_url(redis_url).jobs.status(job_id).done
    except Exception:  # noqa: BLE001 - Redis restarting: ask again
        return None



def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--faults", type=int, default=6, help="faults injected (about one in three a Redis restart)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=900, help="seconds the job may take")
    args = parser.parse_args()
    rng = random.Random(args.seed)

    print(f"editpipe chaos benchmark; {machine()}")
    print(f"parameters: {args.runs} runs; simulator {LATENCY_S:g} s latency, {PER_MINUTE}/min, {CONCURRENT} at "
          f"once, {DROP:.0%} answers dropped, {ERROR_5XX:.0%} 5xx, {FAIL:.0%} predictions failed; "
          f"{WORKERS} workers × {CONCURRENCY}; {args.faults} faults (SIGKILL of a worker's process group, "
          f"or Redis SIGTERMed and back after {REDIS_DOWN_S:g} s); production visibility timeout; seed {args.seed}")
    print(f"targets: 0 runs lost; 0 runs failed on a transient code; 0 duplicate paid submissions beyond "
          f"unconfirmed lines; ledger − bill only "
          f"unconfirmed lines, each ≤ one price; ≤ {TARGET_FAULT_TO_START_S:g} s from each fault to the next start; "
          f"no worker exits on its own\n")

    with workdir() as work:
        server = RedisServer(work / "redis")
        server.start()
        try:
            with simulator(latency_s=LATENCY_S, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT) as sim:
                sim.configure(drop_rate=DROP, error_5xx_rate=ERROR_5XX, fail_rate=FAIL, jitter_s=LATENCY_S / 3,
                              seed=args.seed)
                settings = editpipe_settings(redis_url=server.url, sim=sim, images_per_minute=PER_MINUTE,
                                             max_concurrent=CONCURRENT, EDITPIPE_REQUEST_TIMEOUT="10")
                assert settings.visibility_timeout_s == Settings().visibility_timeout_s  # the production default
                manifest = write_feed_manifest(work / "manifest", args.runs, str(work / "out"), name="chaos")
                fleet = Fleet(settings, work / "logs")
                for _ in range(WORKERS):
                    fleet.start_one()
                try:
                    report = run_with_faults(args, rng, settings, server, fleet, sim, manifest)
                finally:
                    fleet.stop()
                predictions = sim.predictions()
                stats = sim.stats()
        finally:
            server.stop()
        return print_figures(args, report, predictions, stats, work / "out")


def run_with_faults(args, rng: random.Random, settings: Settings, server: RedisServer, fleet: Fleet, sim,
                    manifest: Path) -> dict:
    from pipeline.report import finalize_job
    from pipeline.state import State
    from pipeline.submission import prepare, submit
    from workers.celery_app import job_enqueuer

    time.sleep(3)  # the workers connect
    job_id = submit(prepare(manifest, settings), State.from_url(server.url), job_enqueuer(settings),
                    finalize=finalize_job)
    started = time.time()
    faults: list[tuple[str, float]] = []  # (kind, moment the fault ended: kill time, or Redis back)
    exited: list[str] = []
    kinds = ["kill", "kill", "redis"]
    next_fault = time.monotonic() + rng.uniform(3, 8)
    while time.time() - started < args.timeout:
        if job_done(server.url, job_id):
            break
        for proc in fleet.exited_by_themselves():
            exited.append(f"worker pid {proc.pid} exited with {proc.returncode}")
            fleet.procs.remove(proc)
            fleet.start_one()
        if len(faults) < args.faults and time.monotonic() >= next_fault:
            kind = kinds[len(faults) % len(kinds)]
            if kind == "kill":
                victim = rng.choice(fleet.procs)
                fleet.kill(victim)
                faults.append(("worker SIGKILL", time.time()))
                print(f"  {time.time() - started:6.1f} s: SIGKILLed worker pid {victim.pid}")
                fleet.start_one() if rng.random() < 0.5 else None  # half the time replaced at once
            else:
                server.stop()
                time.sleep(REDIS_DOWN_S)
                server.start()
                faults.append(("Redis restart", time.time()))
                print(f"  {time.time() - started:6.1f} s: Redis restarted ({REDIS_DOWN_S:g} s down)")
            while len(fleet.procs) < WORKERS - 1:
                fleet.start_one()
            next_fault = time.monotonic() + rng.uniform(5, 10)
        elif len(fleet.procs) < WORKERS and time.monotonic() >= next_fault - 3:
            fleet.start_one()  # the supervisor brings the killed worker back
        time.sleep(0.2)
    done = job_done(server.url, job_id)
    return {"job_id": job_id, "faults": faults, "exited": exited, "done": bool(done),
            "wall_s": time.time() - started}


def print_figures(args, report: dict, predictions: list[dict], stats: dict, out: Path) -> int:
    job_id = report["job_id"]
    results = read_jsonl(out / "jobs" / job_id / "results.jsonl")
    ledger = read_jsonl(out / "jobs" / job_id / "ledger.jsonl")
    statuses = Counter(r["status"] for r in results)
    lost = args.runs - len(results) + sum(1 for r in results if r["status"] == "failed" and not r.get("error"))
    missing_outputs = sum(1 for r in results if r["status"] == "succeeded" and not (out / r["output"]).exists())
    failed_transient = sum(1 for r in results if r["status"] == "failed" and r.get("code") == 5000)
    kinds = Counter(r.get("error_kind") or "unknown" for r in results if r["status"] == "failed")

    billed = [p for p in predictions if p["billed"]]
    billed_per_run = Counter(p["run_key"] for p in billed)
    unconfirmed = [line for line in ledger if line["kind"] == "unconfirmed_submit"]
    unconfirmed_per_run = Counter(line["run_key"] for line in unconfirmed)
    beyond = sum(max(0, n - 1 - unconfirmed_per_run[key]) for key, n in billed_per_run.items())
    ledger_total = sum((Decimal(line["cost_usd"]) for line in ledger), Decimal(0))
    bill = Decimal(stats["billed_usd"])
    unconfirmed_total = sum((Decimal(line["cost_usd"]) for line in unconfirmed), Decimal(0))
    largest_unconfirmed = max((Decimal(line["cost_usd"]) for line in unconfirmed), default=Decimal(0))
    confirmed_ids = [line["prediction_id"] for line in ledger if line["kind"] != "unconfirmed_submit"]
    confirmed_match = (len(confirmed_ids) == len(set(confirmed_ids))
                       and set(confirmed_ids) <= {p["id"] for p in billed})

    starts = created_times(predictions)
    last_start = starts[-1] if starts else 0.0
    gaps = []
    for kind, moment in report["faults"]:
        if moment >= last_start:
            continue  # nothing was left to start
        following = next(t for t in starts if t > moment)
        gaps.append((kind, following - moment))

    print(f"\njob {job_id}: {'finished' if report['done'] else 'NOT FINISHED'} in {report['wall_s']:.0f} s; "
          f"{len(results)} result lines of {args.runs} planned: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    print(f"faults: {len(report['faults'])} ({', '.join(k for k, _ in report['faults'])})")
    print(f"runs lost: {lost}  (succeeded without an output file: {missing_outputs})  {verdict(lost == 0 and missing_outputs == 0)}")
    print(f"provider: {stats['created']} predictions created, {stats['billed_count']} billed = ${bill}; "
          f"duplicate submissions it counted: {stats.get('duplicate_submissions')}")
    print(f"predictions failed by the provider (code 5000): {sum(p.get('code') == 5000 for p in predictions)}; "
          f"runs that ended failed on it: {failed_transient}  {verdict(failed_transient == 0)}; failed runs by kind: "
          + (", ".join(f"{n} {k}" for k, n in kinds.most_common()) or "none"))
    print(f"duplicate paid submissions beyond recorded unconfirmed lines: {beyond}  {verdict(beyond == 0)}")
    print(f"ledger ${ledger_total} − bill ${bill} = ${ledger_total - bill}; unconfirmed_submit lines: "
          f"{len(unconfirmed)} = ${unconfirmed_total} (largest ${largest_unconfirmed}); confirmed lines match billed "
          f"predictions one to one: {confirmed_match}  "
          f"{verdict(confirmed_match and ledger_total - bill <= unconfirmed_total and largest_unconfirmed <= Decimal('0.10'))}")
    for kind, gap in gaps:
        print(f"  {kind}: next run started {gap:.1f} s later  {verdict(gap <= TARGET_FAULT_TO_START_S)}")
    worst = max((g for _, g in gaps), default=0.0)
    print(f"fault → next start: worst {worst:.1f} s over {len(gaps)} faults  {verdict(worst <= TARGET_FAULT_TO_START_S)}")
    print(f"workers that exited on their own: {len(report['exited'])}  {verdict(not report['exited'])}")
    for line in report["exited"]:
        print(f"  {line}")
    ok = (report["done"] and lost == 0 and missing_outputs == 0 and beyond == 0 and confirmed_match
          and failed_transient == 0
          and ledger_total - bill <= unconfirmed_total and worst <= TARGET_FAULT_TO_START_S and not report["exited"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
