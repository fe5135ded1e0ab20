"""The steps of a run (``start_run``, ``collect``, ``pump``, ``poll_due``) called directly,
without Celery, against the session's real Redis, moto's S3 and the simulator.

What the engine would ask Celery for is recorded by ``RecordingTasks`` (the
``dispatch.Tasks`` protocol); what the provider saw is the simulator's own count.
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from PIL import Image

from pipeline.dispatch import POLL_GATHER_S, Dispatch, poll_due, poll_slice, pump
from pipeline.execution import Context, Next, collect, poll_run, start_run
from pipeline.provider import Prediction
from pipeline.report import finalize_job
from pipeline.settings import Settings
from pipeline.simulator import Simulator
from pipeline.state import Connection, Due, DueIndex, FairQueue, State, TaskLeases, flush, keys
from pipeline.submission import prepare, resume, submit


class RecordingTasks:
    """The engine's ``Tasks``, noted down instead of sent."""

    def __init__(self) -> None:
        self.submits: list[tuple[str, int, int, float]] = []
        self.pump_wakes = 0
        self.poller_wakes = 0
        self.collected: list[tuple[str, int, Prediction]] = []
        self.finalized: list[str] = []

    def submit_later(self, job_id: str, index: int, failures: int, delay_s: float) -> None:
        self.submits.append((job_id, index, failures, delay_s))

    def wake_pumps(self) -> None:
        self.pump_wakes += 1

    def wake_poller(self) -> None:
        self.poller_wakes += 1

    def collect(self, completed: list[tuple[str, int, Prediction]]) -> None:
        self.collected.extend(completed)

    def finalize(self, job_id: str) -> None:
        self.finalized.append(job_id)


@pytest.fixture
def fresh(settings: Settings) -> Settings:
    """An emptied Redis: the fair queue, the due index and the limits hold nothing."""
    flush(settings.redis_url or "")
    return settings


def steps(settings: Settings) -> tuple[Context, Dispatch, RecordingTasks]:
    ctx = Context.from_settings(settings)
    tasks = RecordingTasks()
    return ctx, Dispatch(ctx, tasks), tasks


def new_job(tmp_path: Path, settings: Settings, dispatch: Dispatch, bucket: str, *, sets: int = 1,
            name: str = "steps") -> str:
    """A recorded job of ``sets`` runs (one local image each), handed to the fair queue."""
    lines = []
    for n in range(sets):
        image = tmp_path / "img" / f"{n}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (10 * n % 255, 120, 40)).save(image)
        lines.append(f"  - id: set-{n}\n    images: [img/{n}.png]")
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(
        f"version: 1\nname: {name}\noutput: s3://{bucket}/{name}\nimage_sets:\n" + "\n".join(lines)
        + "\nprompts:\n  - id: p\n    text: A plain studio shot.\n"
    )
    return submit(prepare(manifest, settings), dispatch.state, dispatch.add_job, finalize=finalize_job)


def wait_completed(sim: Simulator, count: int, timeout_s: float = 10) -> None:
    """Until the simulator has completed ``count`` predictions (its latency is 0 here)."""
    deadline = time.monotonic() + timeout_s
    while sim.stats()["completed"] < count:
        assert time.monotonic() < deadline, f"the simulator completed {sim.stats()['completed']} of {count}"
        time.sleep(0.02)


def test_the_start_check_the_pop_script_writes_parses_as_a_due_member(fresh):
    conn = Connection.from_url(fresh.redis_url or "")
    queue, due = FairQueue(conn, "test:fair"), DueIndex(conn, "test:due")
    queue.push("job-a", 1)
    before = time.time()

    job_id, index, member = queue.pop_marked(due, 30)

    parsed = Due.parse(member)
    assert (job_id, index) == ("job-a", 0)
    assert (parsed.job_id, parsed.index, parsed.attempt, parsed.failures) == ("job-a", 0, Due.START, 0)
    assert before - 1 < parsed.submitted_at < time.time() + 1
    assert parsed.member == member
    assert redis.Redis.from_url(fresh.redis_url or "", decode_responses=True).zrange("test:due", 0, -1) == [member]


def test_a_task_lease_is_held_by_one_token_and_given_up_only_by_it(fresh):
    leases = TaskLeases(Connection.from_url(fresh.redis_url or ""))

    assert leases.lease("pump:0", "mine", 10) and leases.lease("pump:0", "mine", 20)  # taken, then extended
    assert not leases.lease("pump:0", "theirs", 10)
    leases.unlease("pump:0", "theirs")
    assert 10 < leases.lease_left("pump:0") <= 20
    leases.unlease("pump:0", "mine")
    assert leases.lease_left("pump:0") == 0 and leases.lease("pump:0", "theirs", 10)
    assert leases.kick("pump:0", 10) and not leases.kick("pump:0", 10)
    leases.kicked("pump:0")
    assert leases.kick("pump:0", 10)


def test_a_redelivered_start_never_pays_twice(tmp_path, fresh, sim, bucket):
    sim.configure(latency_s=0.0, jitter_s=0.0)
    ctx, dispatch, _ = steps(fresh)
    job_id = new_job(tmp_path, fresh, dispatch, bucket)

    first = start_run(ctx, job_id, 0, token="delivery-1")
    again = start_run(ctx, job_id, 0, token="delivery-2")  # the same message, delivered again

    assert (first.action, again.action) == ("poll", "poll")
    assert sim.stats()["submits"] == 1 and sim.stats()["duplicate_submissions"] == 0
    assert ctx.state.runs.prediction_of(job_id, 0) is not None


def test_collecting_the_same_prediction_twice_charges_once(tmp_path, fresh, sim, bucket, s3):
    sim.configure(latency_s=0.0, jitter_s=0.0)
    ctx, dispatch, _ = steps(fresh)
    job_id = new_job(tmp_path, fresh, dispatch, bucket)
    assert start_run(ctx, job_id, 0, token="t").action == "poll"
    wait_completed(sim, 1)
    found = poll_run(ctx, job_id, 0)
    assert found.action == "collect" and found.prediction is not None

    first = collect(ctx, job_id, 0, found.prediction)
    second = collect(ctx, job_id, 0, found.prediction)  # a webhook and a poll both saw it

    assert (first, second) == (Next("finalize"), Next("done"))
    price = ctx.specs[ctx.state.runs.run(job_id, 0).model].price_for(ctx.state.runs.run(job_id, 0).options)
    status = ctx.state.jobs.status(job_id)
    assert (status.succeeded, status.spent_usd) == (1, price)
    assert len(ctx.state.runs.ledger(job_id)) == 1
    assert sim.stats()["billed_count"] == 1 and Decimal(sim.stats()["billed_usd"]) == price
    run = ctx.state.runs.run(job_id, 0)
    assert s3.head_object(Bucket=bucket, Key=f"steps/{run.output_key}")["ContentLength"] > 0


def test_poll_due_hands_completed_predictions_to_collection_and_keeps_running_ones_due(
    tmp_path, fresh, sim, bucket
):
    ctx, dispatch, tasks = steps(fresh)
    job_id = new_job(tmp_path, fresh, dispatch, bucket, sets=2)
    sim.configure(latency_s=0.0, jitter_s=0.0)
    assert start_run(ctx, job_id, 0, token="t0").action == "poll"
    sim.configure(latency_s=120.0, jitter_s=0.0)
    assert start_run(ctx, job_id, 1, token="t1").action == "poll"
    wait_completed(sim, 1)
    now = time.time()
    dispatch.schedule([], [(Due(job_id, 0, 0, 0, now).member, 0.0), (Due(job_id, 1, 0, 0, now).member, 0.0)])

    left = poll_due(dispatch)

    assert [(j, i) for j, i, _ in tasks.collected] == [(job_id, 0)]
    assert tasks.collected[0][2].id == ctx.state.runs.prediction_of(job_id, 0)
    assert sim.stats()["polls"] == 2
    due = [Due.parse(m) for m in redis.Redis.from_url(fresh.redis_url or "", decode_responses=True)
           .zrange(keys.DUE, 0, -1)]
    # The running one is checked again; the completed one stays as a safety net for its collect.
    assert sorted((d.index, d.attempt) for d in due) == [(0, 1), (1, 1)]
    assert left is not None and left > 0
    assert ctx.state.jobs.status(job_id).finished == 0  # collection is the collect step's


@pytest.mark.parametrize("latency_s", [60.0, 3.0])
def test_checks_coming_due_within_the_gather_window_are_made_in_one_batch(tmp_path, fresh, sim, bucket, latency_s):
    """Checks come due one by one; the poller makes those due within ``POLL_GATHER_S`` of a
    batch's start in the next batch, not one batch (Redis round trips, a collect message)
    each; but not for a model so quick that the wait would hold its slots noticeably longer
    (2% of 3 s: checks 80 ms apart are made one by one)."""
    ctx, dispatch, tasks = steps(fresh)
    calls: list[int] = []
    record = tasks.collect

    def collect(completed: list[tuple[str, int, Prediction]]) -> None:
        calls.append(len(completed))
        record(completed)

    tasks.collect = collect  # type: ignore[method-assign]
    job_id = new_job(tmp_path, fresh, dispatch, bucket, sets=6)
    sim.configure(latency_s=0.0, jitter_s=0.0)
    for index in range(6):
        assert start_run(ctx, job_id, index, token=f"t{index}").action == "poll"
    wait_completed(sim, 6)
    ctx.state.latency.set(ctx.state.runs.run(job_id, 0).model, latency_s)  # as seen so far
    now = time.time()
    # The first due now, the others one after another within the window.
    spacing = POLL_GATHER_S * 0.8 / 5
    dispatch.schedule([], [(Due(job_id, i, 0, 0, now).member, i * spacing) for i in range(6)])

    left = poll_slice(dispatch, slice_s=3 * POLL_GATHER_S)

    assert sorted(i for _, i, _ in tasks.collected) == list(range(6))
    assert sim.stats()["polls"] == 6
    if latency_s == 60.0:
        assert len(calls) <= 2, calls  # six, one a member, without the gathering
    else:
        assert len(calls) > 2, calls
    # What is left are the completed ones' safety-net checks, due long after this slice.
    assert left is not None and left > 3 * POLL_GATHER_S


def test_pump_stops_when_the_queue_is_empty(tmp_path, fresh, sim, bucket):
    sim.configure(latency_s=60.0, jitter_s=0.0)
    ctx, dispatch, tasks = steps(fresh)
    job_id = new_job(tmp_path, fresh, dispatch, bucket, sets=3)

    started = time.monotonic()
    assert pump(dispatch, "pump-token", slice_s=30) is False  # not a slice's worth of waiting

    assert time.monotonic() - started < 15
    assert sim.stats()["submits"] == 3
    assert tasks.poller_wakes == 1  # once a slice, not once a run
    assert not ctx.state.fair.has_runs()
    assert sorted(Due.parse(m).index for m in redis.Redis.from_url(fresh.redis_url or "", decode_responses=True)
                  .zrange(keys.DUE, 0, -1)) == [0, 1, 2]
    assert all(ctx.state.runs.prediction_of(job_id, i) for i in range(3))


def test_pump_respects_the_concurrency_cap(tmp_path, fresh, sim, bucket):
    sim.configure(latency_s=60.0, jitter_s=0.0)
    capped = fresh.with_overrides(images_per_minute=5000, max_concurrent=2)
    ctx, dispatch, tasks = steps(capped)
    job_id = new_job(tmp_path, capped, dispatch, bucket, sets=4)

    assert pump(dispatch, "pump-token", slice_s=1.0) is True  # runs are left for the next slice

    stats = sim.stats()
    assert (stats["submits"], stats["processing"], stats["count_429"]) == (2, 2, 0)
    assert ctx.limits is not None and ctx.limits.in_use() == 2
    assert ctx.state.fair.has_runs()
    assert ctx.state.runs.unfinished(job_id, range(4)) == [0, 1, 2, 3]
    assert tasks.submits == []  # the runs refused went back to the fair queue, not to messages


def test_a_finished_job_leaves_the_fair_queue_and_a_resume_brings_its_runs_back(tmp_path, fresh, sim, bucket):
    sim.configure(latency_s=60.0, jitter_s=0.0)
    ctx, dispatch, tasks = steps(fresh)
    state: State = ctx.state
    r = redis.Redis.from_url(fresh.redis_url or "", decode_responses=True)

    def fair_entries() -> int:
        return r.hlen(keys.fair_queue()[1])  # ep:fair:jobs: six fields per job known

    jobs = [new_job(tmp_path / str(n), fresh, dispatch, bucket, sets=2, name=f"job{n}") for n in range(3)]
    assert fair_entries() == 3 * 6
    for job_id in jobs:
        state.jobs.cancel(job_id)

    assert pump(dispatch, "pump-token", slice_s=30) is False  # each run fails: not started, cancelled
    assert sorted(tasks.finalized) == sorted(jobs) and sim.stats()["submits"] == 0
    for job_id in jobs:
        finalize_job(state, ctx.storage(state.jobs.output_root(job_id)), job_id)
        state.finalized(job_id)

    assert fair_entries() == 0
    assert state.jobs.status(jobs[0]).status == "cancelled"

    assert resume(state, jobs[0], dispatch.resume) == [0, 1]
    assert fair_entries() == 6 and tasks.submits == []
    assert pump(dispatch, "pump-token", slice_s=30) is False
    assert sim.stats()["submits"] == 2


def test_a_minute_long_edit_is_first_checked_after_its_latency_with_its_slot_held_until_then(
    tmp_path, fresh, sim, bucket
):
    sim.configure(latency_s=60.0, jitter_s=0.0)
    ctx, dispatch, tasks = steps(fresh)
    job_id = new_job(tmp_path, fresh, dispatch, bucket, sets=1)
    model = ctx.state.runs.run(job_id, 0).model
    ctx.state.latency.set(model, 60.0)  # as an earlier job had seen it
    r = redis.Redis.from_url(fresh.redis_url or "", decode_responses=True)

    assert pump(dispatch, "pump-token", slice_s=5) is False
    now = time.time()

    [(member, due_at)] = r.zrange(keys.DUE, 0, -1, withscores=True)
    assert Due.parse(member).attempt == 0
    # Once, just after the minute the latency says, not every half lease (30 s) to keep the slot.
    assert 62 < due_at - now <= 63.5
    assert ctx.limits is not None
    held_until = r.zscore(ctx.limits.concurrency.key, f"{job_id}:0") / 1e6
    lease_s = ctx.limits.concurrency.lease_s
    assert held_until - due_at > lease_s / 2 - 1, "the slot outlasts the first check by half a lease"
    assert held_until - now > lease_s, "longer than a plain lease"


def test_while_no_prediction_has_completed_checks_wait_as_long_as_the_oldest_has_run(fresh):
    defaults = fresh.with_overrides(poll_initial_s=2.0, poll_max_s=30.0)  # the provider's 2 s; editpipe's 30 s
    ctx, dispatch, tasks = steps(defaults)
    plain = Dispatch(ctx, tasks)
    model = "openai/gpt-image-2/edit"
    assert (plain.first_poll_s(model), plain.next_poll_s(model, 0)) == (2.0, 2.0), "nothing noted: the plain schedule"

    ctx.state.latency.note_unknown(model, time.time() - 20)  # the oldest was submitted 20 s ago
    ctx.state.latency.note_unknown(model, time.time() - 5)  # a younger one changes nothing
    waiting = Dispatch(ctx, tasks)
    assert 19.5 < waiting.first_poll_s(model) < 21
    assert 19.5 < waiting.next_poll_s(model, 0) < 21
    assert waiting.next_poll_s(model, 8) == 30.0, "never more than poll_max_s apart"

    ctx.state.latency.note_unknown("other/model", time.time() - 300)
    assert Dispatch(ctx, tasks).first_poll_s("other/model") == 30.0

    ctx.state.latency.set(model, 4.0)
    known = Dispatch(ctx, tasks)
    assert known.latency_floor(model) == 0.0
    assert abs(known.first_poll_s(model) - 4.2) < 0.01, "once known, just after the latency"
