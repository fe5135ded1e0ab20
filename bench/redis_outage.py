"""Redis away for a minute mid-job: every editpipe process rides it out, the job finishes,
nothing is lost and nothing is paid twice.

The parts are real and separate processes, at the production settings (nothing here
shortens a lease, a timeout or the visibility timeout): a redis-server with its append-only
file on, the simulator (``python -m pipeline.simulator``), three ``celery -A workers worker``,
``celery -A workers beat`` (one schedule, not due), ``editpipe webhook-server`` (the simulator
calls it back for every prediction), ``editpipe submit --wait`` following the job, and, while
Redis is down, ``editpipe status JOB``. A few seconds into the job Redis is SIGTERMed and
started again on the same port and folder ``--down`` seconds later.

Printed, from what the processes, the simulator and storage show (not what editpipe says
about itself):
- every process: alive after the outage (or, for ``submit --wait`` and ``status``, how it
  ended and when);
- runs lost (planned runs without a result line, failed runs without a reason);
- paid duplicates beyond the recorded ``unconfirmed_submit`` lines, and ledger minus bill;
- seconds from Redis answering again to the next run the provider saw started.

    .venv/bin/python bench/redis_outage.py [--runs 200] [--down 60]

Exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    ROOT,
    created_times,
    editpipe_settings,
    machine,
    read_jsonl,
    simulator,
    verdict,
    workdir,
    write_feed_manifest,
)
from chaos import Fleet, RedisServer  # noqa: E402

from pipeline.embedded import free_port  # noqa: E402

PER_MINUTE, CONCURRENT, LATENCY_S = 600, 30, 3.0
EDITPIPE = str(Path(sys.executable).parent / "editpipe")
WORKERS = 3
TARGET_BACK_TO_START_S = 30.0
# `status` rides out an outage of up to RIDE_OUT_S (pipeline/state/connection.py): with Redis
# back within that, it answers; it must never hang past it.
STATUS_BOUND_S = 120.0


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, stdin=subprocess.DEVNULL)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def write_schedules(path: Path, manifest: Path) -> None:
    # A nightly schedule that is not due during the benchmark: beat only has to stay up.
    path.write_text(f"schedules:\n  - name: nightly\n    manifest: {manifest}\n    cron: \"0 3 * * *\"\n"
                    f"    timezone: UTC\n    catch_up: 0\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--down", type=float, default=60.0, help="seconds Redis stays down")
    parser.add_argument("--after", type=float, default=8.0, help="seconds into the job Redis goes down")
    parser.add_argument("--timeout", type=float, default=600, help="seconds the job may take")
    args = parser.parse_args()

    print(f"editpipe Redis outage benchmark; {machine()}")
    print(f"parameters: {args.runs} runs; simulator {LATENCY_S:g} s latency, {PER_MINUTE}/min, {CONCURRENT} at once, "
          f"webhooks on; {WORKERS} workers, beat, webhook server, submit --wait; Redis SIGTERMed {args.after:g} s into "
          f"the job and back after {args.down:g} s (append-only file on); production settings")
    print(f"targets: no process exits or hangs; the job finishes with 0 runs lost and 0 paid duplicates beyond "
          f"unconfirmed lines; ≤ {TARGET_BACK_TO_START_S:g} s from Redis back to the next start\n")

    with workdir() as work:
        server = RedisServer(work / "redis")
        server.start()
        hook_port = free_port()
        procs: dict[str, subprocess.Popen] = {}
        try:
            with simulator(latency_s=LATENCY_S, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT) as sim:
                settings = editpipe_settings(
                    redis_url=server.url, sim=sim, images_per_minute=PER_MINUTE, max_concurrent=CONCURRENT,
                    EDITPIPE_WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/webhook",
                    EDITPIPE_WEBHOOK_SECRET="bench-hook-secret",
                )
                manifest = write_feed_manifest(work / "manifest", args.runs, str(work / "out"), name="outage")
                write_schedules(work / "schedules.yaml", manifest)
                fleet = Fleet(settings, work / "logs")
                env = dict(fleet.env, EDITPIPE_SCHEDULES=str(work / "schedules.yaml"), CI="true")
                fleet.env = env
                for _ in range(WORKERS):
                    fleet.start_one()
                logs = work / "logs"
                procs["beat"] = spawn([sys.executable, "-m", "celery", "-A", "workers", "beat", "--loglevel", "INFO",
                                       "--schedule", str(work / "beat-schedule")], env, logs / "beat.log")
                procs["webhook server"] = spawn([EDITPIPE, "webhook-server", "--host",
                                                 "127.0.0.1", "--port", str(hook_port)], env, logs / "webhook.log")
                time.sleep(4)  # the workers connect
                procs["submit --wait"] = spawn([EDITPIPE, "submit", str(manifest),
                                                "--wait"], env, logs / "submit.log")
                try:
                    report = outage(args, server, fleet, procs, env, sim, logs)
                finally:
                    fleet.stop()
                    for proc in procs.values():
                        stop(proc)
                predictions = sim.predictions()
                stats = sim.stats()
                hooks = sim_hooks(stats)
        finally:
            server.stop()
        return print_figures(args, report, predictions, stats, hooks, work / "out", logs)


def sim_hooks(stats: dict) -> int:
    return int(stats.get("webhooks_sent") or 0)


def job_id_of(out: Path) -> str | None:
    jobs = out / "jobs"
    found = sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []
    return found[0] if found else None


def outage(args, server: RedisServer, fleet: Fleet, procs: dict, env: dict, sim, logs: Path) -> dict:
    started = time.time()
    # Wait for the job to be in flight: the provider has started some runs.
    while sim.stats()["created"] < 10 and time.time() - started < 60:
        time.sleep(0.2)
    time.sleep(max(0.0, args.after - (time.time() - started)))
    server.stop()
    down_at = time.time()
    print(f"  {down_at - started:6.1f} s: Redis SIGTERMed ({sim.stats()['created']} predictions created so far)")
    # `status` asked while Redis is away: it must answer once Redis is back, not hang or trace.
    time.sleep(min(5.0, args.down / 2))
    status_job = job_from_submit_log(logs / "submit.log")
    status_proc = None
    if status_job:
        status_proc = spawn([EDITPIPE, "status", status_job], env, logs / "status.log")
        status_started = time.time()
    time.sleep(max(0.0, args.down - (time.time() - down_at)))
    server.start()
    back_at = time.time()
    print(f"  {back_at - started:6.1f} s: Redis answering again after {back_at - down_at:.1f} s")

    exited_during = {name: p.returncode for name, p in procs.items()
                     if name != "submit --wait" and p.poll() is not None}
    status_result = None
    if status_proc is not None:
        try:
            status_proc.wait(timeout=STATUS_BOUND_S)
            status_result = (status_proc.returncode, time.time() - status_started)
        except subprocess.TimeoutExpired:
            status_result = (None, time.time() - status_started)
            stop(status_proc)
    submit = procs["submit --wait"]
    try:
        submit.wait(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        pass
    finished_at = time.time()
    workers_exited = [f"worker pid {p.pid} exited with {p.returncode}" for p in fleet.procs if p.poll() is not None]
    others_exited = {name: p.returncode for name, p in procs.items() if name != "submit --wait" and p.poll() is not None}
    return {"started": started, "down_at": down_at, "back_at": back_at, "finished_at": finished_at,
            "submit_rc": submit.poll(), "status": status_result, "job_id": status_job,
            "workers_exited": workers_exited, "others_exited": {**exited_during, **others_exited}}


def job_from_submit_log(log: Path) -> str | None:
    """The job id `editpipe submit` printed (its first line names it)."""
    import re

    match = re.search(r"\b(outage-[0-9A-Za-z-]+)\b", log.read_text(errors="replace")) if log.exists() else None
    return match.group(1) if match else None


def print_figures(args, report: dict, predictions: list[dict], stats: dict, hooks: int, out: Path,
                  logs: Path) -> int:
    job_id = report["job_id"] or job_id_of(out)
    results = read_jsonl(out / "jobs" / job_id / "results.jsonl") if job_id else []
    ledger = read_jsonl(out / "jobs" / job_id / "ledger.jsonl") if job_id else []
    statuses = Counter(r["status"] for r in results)
    lost = args.runs - len(results) + sum(1 for r in results if r["status"] == "failed" and not r.get("error"))
    missing = sum(1 for r in results if r["status"] == "succeeded" and not (out / r["output"]).exists())
    billed = [p for p in predictions if p["billed"]]
    per_run = Counter(p["run_key"] for p in billed)
    unconfirmed = Counter(line["run_key"] for line in ledger if line["kind"] == "unconfirmed_submit")
    beyond = sum(max(0, n - 1 - unconfirmed[key]) for key, n in per_run.items())
    ledger_total = sum((Decimal(line["cost_usd"]) for line in ledger), Decimal(0))
    bill = Decimal(stats["billed_usd"])
    starts = created_times(predictions)
    after = [t for t in starts if t > report["back_at"]]
    back_to_start = (after[0] - report["back_at"]) if after else None

    print(f"\njob {job_id}: submit --wait exited {report['submit_rc']} "
          f"{report['finished_at'] - report['started']:.0f} s after the job began; "
          f"{len(results)} result lines of {args.runs}: " + ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    print(f"Redis down {report['back_at'] - report['down_at']:.1f} s, from {report['down_at'] - report['started']:.1f} s "
          f"into the job")
    ok_submit = report["submit_rc"] == 0
    print(f"submit --wait: exit {report['submit_rc']}  {verdict(ok_submit)}")
    rc, took = report["status"] or (None, None)
    ok_status = rc == 0
    print(f"status asked while Redis was down: exit {rc}, answered after {took if took is None else round(took, 1)} s "
          f"(bound {STATUS_BOUND_S:g} s)  {verdict(ok_status)}")
    exited = report["workers_exited"] + [f"{name} exited with {rc}" for name, rc in report["others_exited"].items()]
    print(f"workers, beat and webhook server that exited: {len(exited)}  {verdict(not exited)}")
    for line in exited:
        print(f"  {line}")
    print(f"runs lost: {lost}  (succeeded without an output file: {missing})  {verdict(lost == 0 and missing == 0)}")
    print(f"provider: {stats['created']} created, {stats['billed_count']} billed = ${bill}; webhooks sent {hooks}")
    print(f"paid duplicates beyond unconfirmed lines: {beyond}  {verdict(beyond == 0)}")
    print(f"ledger ${ledger_total} − bill ${bill} = ${ledger_total - bill}  "
          f"{verdict(ledger_total - bill <= sum(unconfirmed.values()) * Decimal('0.10') and ledger_total >= bill)}")
    if back_to_start is None:
        print("Redis back → next start: nothing was left to start")
    else:
        print(f"Redis back → next start: {back_to_start:.1f} s  {verdict(back_to_start <= TARGET_BACK_TO_START_S)}")
    ok = (ok_submit and ok_status and not exited and lost == 0 and missing == 0 and beyond == 0
          and ledger_total >= bill and (back_to_start is None or back_to_start <= TARGET_BACK_TO_START_S))
    if not ok:
        kept = Path(tempfile.gettempdir()) / "editpipe-outage-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(logs, kept)
        print(f"logs kept in {kept}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
