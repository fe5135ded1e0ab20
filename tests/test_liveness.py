"""Liveness without the broker: work held by a SIGKILLed worker goes on elsewhere within
seconds of its lease lapsing, at the production visibility timeout (600 s), which returns a
dead worker's messages only after every job here has finished.

Money is proven by what the simulator saw; time is asserted as a behaviour bound (the job
finished long before the broker could have handed back anything), never as a speed.
"""

from __future__ import annotations

import signal
import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis

from conftest import many_runs_manifest, read_jsonl
from pipeline import adoption
from pipeline.dispatch import Dispatch, poll_due, pump

from pipeline.execution import Context
from pipeline.provider import Prediction
from pipeline.report import finalize_job
from pipeline.state import Due, State, flush, keys
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer
from workers.watchdog import KICK_S

pytestmark = pytest.mark.timeout(300)
LOST_WITH_WORKER = "the submit's answer was lost with its worker"


def ledger_total(lines: list[dict]) -> Decimal:
    return sum((Decimal(line["cost_usd"]) for line in lines), Decimal("0"))


class Wakes:
    """The engine's ``Tasks``, counted instead of sent."""

    def __init__(self) -> None:
        self.pumps = self.pollers = 0
        self.collected: list[tuple[str, int, Prediction]] = []
        self.finalized: list[str] = []

    def wake_pumps(self) -> None:
        self.pumps += 1

    def wake_poller(self) -> None:
        self.pollers += 1

    def collect(self, completed: list[tuple[str, int, Prediction]]) -> None:
        self.collected.extend(completed)

    def finalize(self, job_id: str) -> None:
        self.finalized.append(job_id)


def submit_job(settings, manifest: Path) -> str:
    return submit(prepare(manifest, settings), State.from_url(settings.redis_url), job_enqueuer(settings),
                  finalize=finalize_job)


def wait_done(settings, job_id: str, timeout_s: float):
    state = State.from_url(settings.redis_url)
    status = follow(state, job_id, lambda s: None, 0.2, timeout_s)
    assert status.done, f"{job_id} still {status.status} after {timeout_s}s"
    return status


def assert_paid_once(sim, s3, bucket: str, job_id: str, total: int) -> dict:
    """Every run ended, none was paid twice, and the ledger is the bill: each billed
    prediction is charged once (by id, or as an unconfirmed line when a kill cut off its
    submit's answer); the only lines beyond the bill are such submits the provider never
    created, each at its price. Returns the figures, for the test's printout."""
    results = read_jsonl(s3, bucket, f"out/jobs/{job_id}/results.jsonl")
    ledger = read_jsonl(s3, bucket, f"out/jobs/{job_id}/ledger.jsonl")
    stats = sim.stats()
    assert len(results) == total and len({r["run_key"] for r in results}) == total
    unconfirmed = [line for line in ledger if line["kind"] == "unconfirmed_submit"]
    lost = [r for r in results if r["status"] == "failed"]
    assert all(r["status"] == "succeeded" for r in results if r not in lost)
    # A run fails only when a kill cut off its submit's answer, and then it has its line.
    assert all(LOST_WITH_WORKER in r["error"] for r in lost), [r["error"] for r in lost]
    assert {r["run_key"] for r in lost} <= {line["run_key"] for line in unconfirmed}
    assert stats["duplicate_submissions"] == 0
    billed = [p for p in sim.predictions() if p["billed"]]
    confirmed = [line["prediction_id"] for line in ledger if line["kind"] != "unconfirmed_submit"]
    assert len(confirmed) == len(set(confirmed)) and set(confirmed) <= {p["id"] for p in billed}
    assert {p["run_key"] for p in billed if p["id"] not in confirmed} <= {line["run_key"] for line in unconfirmed}
    never_billed = [line for line in unconfirmed if line["run_key"] not in {p["run_key"] for p in billed}]
    assert ledger_total(ledger) == Decimal(stats["billed_usd"]) + ledger_total(never_billed)
    return {"succeeded": total - len(lost), "lost_answers": len(lost), "billed": stats["billed_count"],
            "billed_usd": stats["billed_usd"], "ledger_usd": ledger_total(ledger)}


# ---- the state layer's watch, and delayed starts, without a worker ---------------------------


def test_the_watch_starts_each_task_whose_lease_is_not_held_once_while_work_waits(settings, state):
    flush(settings.redis_url)
    r = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    leases = state.tasks

    def look():
        return leases.watch(2, kick_s=KICK_S, due_within_s=2.0, finalize_after_s=20, finalize_kick_s=60)

    nothing = look()
    assert (nothing.poller, nothing.pumps, nothing.finalize) == (False, [], [])
    state.fair.push("job-a", 3)
    state.due.schedule([], [(Due("job-a", 0, 0, 0, time.time()).member, 60.0)])  # due in a minute
    assert leases.lease(leases.pump(0), "live-holder", 13)
    r.zadd(keys.TO_FINALIZE, {"job-old": int(time.time()) - 60, "job-new": int(time.time())})

    first = look()
    again = look()  # another worker's watchdog, a moment later

    assert (first.poller, first.pumps, first.finalize) == (False, [1], ["job-old"])
    assert (again.poller, again.pumps, again.finalize) == (False, [], [])
    # A kick lost with a dead worker stops the next one for a few seconds only.
    assert 0 < r.pttl(keys.task_kick(leases.pump(1))) <= KICK_S * 1000
    state.due.schedule([], [(Due("job-a", 1, 0, 0, time.time()).member, 1.0)])
    assert look().poller and not look().poller


def test_a_start_that_failed_for_now_waits_in_the_due_index_not_in_a_message(tmp_path, settings, sim, bucket):
    flush(settings.redis_url)
    sim.configure(latency_s=0.0, jitter_s=0.0, error_5xx_rate=1.0)
    ctx = Context.from_settings(settings)
    wakes = Wakes()
    dispatch = Dispatch(ctx, wakes)
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=1, prompts=1)
    job_id = submit(prepare(manifest, settings), ctx.state, dispatch.add_job, finalize=finalize_job)

    assert pump(dispatch, "pump-token", slice_s=0.5) is False  # one 5xx, then the queue is empty

    [member] = redis.Redis.from_url(settings.redis_url, decode_responses=True).zrange(keys.DUE, 0, -1)
    waiting = Due.parse(member)
    # A 5xx may have made a prediction: the start's next step looks for it (the look counts
    # the failure when the provider made none), then submits again.
    assert (waiting.job_id, waiting.index, waiting.attempt, waiting.failures) == (job_id, 0, Due.START, 0)
    assert wakes.pollers >= 1 and ctx.state.fair.pop() is None  # not back in the queue either
    sim.configure(error_5xx_rate=0.0)
    deadline = time.monotonic() + adoption.LOOKS_AT_S[-1] + 15
    while ctx.state.runs.prediction_of(job_id, 0) is None:  # the poller starts it once it is due
        assert time.monotonic() < deadline, "the delayed start was never made"
        poll_due(dispatch)
        time.sleep(0.1)
    assert sim.stats()["created"] == 1 and sim.stats()["injected_5xx"] >= 1


# ---- real workers, SIGKILLed ------------------------------------------------------------------


def test_workers_killed_one_after_another_and_restarted_finish_the_job_long_before_the_visibility_timeout(
    tmp_path, settings, sim, workers, bucket, s3
):
    # 4 at a time for about a second each: the 40 runs take 10 s or more, so every kill lands
    # mid-job, with pumps, the poller and collects held by the worker killed.
    sim.configure(latency_s=1.0, jitter_s=0.3, max_concurrent=4)
    workers.settings = settings.with_overrides(max_concurrent=4)
    assert workers.settings.visibility_timeout_s == 600
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=20)
    workers.start(count=3, concurrency=4)
    workers.wait_ready()
    started = time.monotonic()
    job_id = submit_job(settings, manifest)

    for victim in range(3):
        time.sleep(1.5)
        workers.kill(victim)
        workers.start(count=1, concurrency=4)
    status = wait_done(settings, job_id, timeout_s=120)
    took = time.monotonic() - started

    figures = assert_paid_once(sim, s3, bucket, job_id, 40)
    print(f"\nkilled one after another x3, restarted: finished in {took:.0f} s, {figures}")
    assert status.finished == 40
    assert took < 300  # the broker hands a dead worker's messages back only after 600 s


def test_a_worker_killed_mid_job_and_not_restarted_leaves_the_job_to_the_other_two(
    tmp_path, settings, sim, workers, bucket, s3
):
    sim.configure(latency_s=1.0, jitter_s=0.3, max_concurrent=4)
    workers.settings = settings.with_overrides(max_concurrent=4)
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=20)
    workers.start(count=3, concurrency=4)
    workers.wait_ready()
    started = time.monotonic()
    job_id = submit_job(settings, manifest)

    time.sleep(3)
    workers.kill(0, signal.SIGKILL)
    status = wait_done(settings, job_id, timeout_s=120)
    took = time.monotonic() - started

    figures = assert_paid_once(sim, s3, bucket, job_id, 40)
    print(f"\none of three killed, not restarted: finished in {took:.0f} s, {figures}")
    assert status.finished == 40
    assert [p.poll() is None for p in workers.procs] == [False, True, True]
    assert took < 300
