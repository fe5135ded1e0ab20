"""Schedules: beat starts them on their cron, a start never overlaps the previous run, and a
nightly run pays only for what changed. Real Redis, moto S3, the simulator, Celery worker
and beat processes; money is what the simulator billed."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner

from conftest import AWS_ENV, ROOT, make_image, read_jsonl
from pipeline.cli import EditpipeGroup
from pipeline.cli.schedules import schedules
from pipeline.embedded import worker_env
from pipeline.errors import ManifestError
from pipeline.report import finalize_job
from pipeline.schedules import Start, load_schedules, start_schedule
from pipeline.state import JobStatus, State
from pipeline.settings import Settings
from pipeline.submission import follow
from workers.beat import CronSchedule, Scheduler
from workers.celery_app import job_enqueuer, make_app

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def fast(settings: Settings, workers) -> Settings:
    """The test settings with account limits that never slow a test down."""
    fast = settings.with_overrides(images_per_minute=6000, max_concurrent=50)
    workers.settings = fast
    return fast


def small_manifest(tmp_path: Path, output: str, sets: int = 2, name: str = "small") -> Path:
    make_image(tmp_path / "p.png")
    lines = "".join(f"\n  - id: s{i}\n    images: [p.png]\n    vars: {{product: item {i}}}" for i in range(sets))
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"version: 1\nname: {name}\noutput: {output}\nimage_sets:{lines}\n"
        "prompts:\n  - id: p\n    text: A portrait with the {product}.\n"
        'output_key: "{image_set}/{prompt}/{variant}"\n'
    )
    return path


def schedules_file(tmp_path: Path, monkeypatch, *entries: str) -> Path:
    """A schedules file, named by EDITPIPE_SCHEDULES for this process and the workers and
    beat it starts."""
    path = tmp_path / "schedules.yaml"
    path.write_text("schedules:\n" + "".join(entries))
    monkeypatch.setenv("EDITPIPE_SCHEDULES", str(path))
    return path


def entry(name: str, manifest: str, cron: str = "0 2 * * *", tz: str = "Europe/Paris", enabled: bool = True,
          budget: str = "20.00") -> str:
    return (f"  - name: {name}\n    cron: \"{cron}\"\n    timezone: {tz}\n    manifest: {manifest}\n"
            f"    budget_usd: {budget}\n    enabled: {str(enabled).lower()}\n")


def start(settings: Settings, path: Path, name: str, token: str) -> Start:
    schedule = {s.name: s for s in load_schedules(path)}[name]
    state = State.from_url(settings.redis_url or "")
    return start_schedule(schedule, settings.with_overrides(schedules_file=path), state, job_enqueuer(settings),
                          finalize=finalize_job, token=token, trigger="beat")


def wait_done(settings: Settings, job_id: str, timeout_s: float = 90) -> JobStatus:
    status = follow(State.from_url(settings.redis_url or ""), job_id, lambda s: None, 0.2, timeout_s)
    assert status.done, f"{job_id} still {status.status} after {timeout_s}s"
    return status


def wait_for(predicate, timeout_s: float, what: str, logs=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s}s waiting for {what}\n{logs()}")


# --- The schedules file and the cron, without servers --------------------------------------


def test_every_problem_of_a_schedules_file_is_reported_at_its_line(tmp_path):
    path = tmp_path / "schedules.yaml"
    path.write_text(
        "schedules:\n"
        "  - name: nightly\n"
        '    cron: "61 2 * * *"\n'
        "    timezone: Europe/Pariss\n"
        "    manifest: m.yaml\n"
        "  - name: weekly\n"
        '    cron: "0 2 * * * *"\n'
        "    manifest: https://example.com/m.yaml\n"
        "    budget: 5\n"
    )
    with pytest.raises(ManifestError) as exc:
        load_schedules(path)
    assert [str(i) for i in exc.value.issues] == [
        f"{path}:3:11: schedules[0].cron: '61 2 * * *' is not a valid cron expression "
        "(minute hour day-of-month month day-of-week): [61 2 * * *] is not acceptable, out of range",
        f"{path}:4:15: schedules[0].timezone: unknown timezone 'Europe/Pariss' (did you mean 'Europe/Paris'?)",
        f"{path}:7:11: schedules[1].cron: a cron expression has 5 fields "
        "(minute hour day-of-month month day-of-week), '0 2 * * * *' has 6",
        f"{path}:8:15: schedules[1].manifest: a schedule's manifest is a local path or an s3:// URI",
        f"{path}:9:5: schedules[1].budget: unknown key 'budget' (did you mean 'budget_usd'?)",
    ]
    assert load_schedules(tmp_path / "absent.yaml") == []


def test_a_missing_manifest_is_reported_at_the_schedule_line_and_an_s3_one_by_its_uri(tmp_path, settings, bucket, s3):
    path = tmp_path / "schedules.yaml"
    path.write_text("schedules:\n" + entry("nightly", "gone.yaml") + entry("remote", f"s3://{bucket}/gone.yaml")
                    + entry("invalid", f"s3://{bucket}/m.yaml"))
    s3.put_object(Bucket=bucket, Key="m.yaml", Body=b"version: 2\nname: m\noutput: out\n")

    def issues(name: str) -> list[str]:
        with pytest.raises(ManifestError) as exc:
            start(settings, path, name, token=name)
        return [str(i) for i in exc.value.issues]

    assert issues("nightly") == [f"{path}:5:15: manifest: schedule 'nightly': no manifest at {tmp_path / 'gone.yaml'}"]
    assert issues("remote")[0].startswith(
        f"{path}:11:15: manifest: schedule 'remote': cannot read s3://{bucket}/gone.yaml:"
    )
    assert f"s3://{bucket}/m.yaml:1:10: version: version 2 is not supported; this editpipe reads version 1" in issues(
        "invalid"
    )
    state = State.from_url(settings.redis_url or "").schedule("invalid")
    assert state.last()["outcome"] == "failed" and state.holder() is None


def test_the_cron_is_read_in_the_schedule_timezone_and_a_missed_time_is_due_once():
    paris = CronSchedule("0 2 * * *", "Europe/Paris")
    # 02:00 does not exist in Paris on 2025-03-30 (clocks go 02:00 → 03:00): the run is at 03:00.
    assert paris.next_after(datetime(2025, 3, 29, 12, tzinfo=timezone.utc)) == datetime(
        2025, 3, 30, 3, tzinfo=ZoneInfo("Europe/Paris")
    )
    assert paris.next_after(datetime(2025, 6, 1, 0, 30, tzinfo=timezone.utc)) == datetime(
        2025, 6, 1, 0, 0, tzinfo=timezone.utc
    ) + timedelta(days=1)
    now = paris.now()
    due, _ = paris.is_due(now - timedelta(days=3))  # three nights missed: due, once
    assert due
    due, wait_s = paris.is_due(now)
    assert not due and 0 < wait_s <= 24 * 3600


def scheduler(settings: Settings, monkeypatch) -> Scheduler:
    """Beat's scheduler as ``celery beat`` builds it, on the test's Redis (no beat process)."""
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    return Scheduler(app=make_app(settings))


def seed_handled(settings: Settings, path: Path, name: str, moment: datetime) -> None:
    """Make Redis say ``name``'s last handled cron time is the one at or before ``moment``:
    beat was last up then."""
    schedule = {s.name: s for s in load_schedules(path)}[name]
    records = State.from_url(settings.redis_url or "").schedule(name)
    records.baseline(schedule.last_run(moment).timestamp(), schedule.cron_key)


def test_beat_starts_without_a_schedules_file_and_a_new_or_changed_cron_has_missed_nothing(
    tmp_path, settings, monkeypatch, r
):
    r.flushall()
    schedules_file(tmp_path, monkeypatch)
    (tmp_path / "schedules.yaml").unlink()
    empty = scheduler(settings, monkeypatch)
    assert dict(empty.schedule) == {}

    path = schedules_file(tmp_path, monkeypatch, entry("nightly", "m.yaml", cron="0 2 * * *"))
    first = scheduler(settings, monkeypatch)
    assert not first.is_due(first.schedule["nightly"])[0]  # first seen: its next time is the first
    # Beat was down for two days under the old cron; the cron changes: nothing is due at once.
    seed_handled(settings, path, "nightly", datetime.now(timezone.utc) - timedelta(days=2))
    path.write_text(path.read_text().replace("0 2 * * *", "0 3 * * *"))
    again = scheduler(settings, monkeypatch)
    assert again.schedule["nightly"].schedule == CronSchedule("0 3 * * *", "Europe/Paris")
    due, wait_s = again.is_due(again.schedule["nightly"])
    assert not due and 0 < wait_s <= 24 * 3600


def test_a_time_missed_past_the_catch_up_window_is_recorded_as_missed_and_not_run(
    tmp_path, settings, monkeypatch, r
):
    r.flushall()
    # Due every day two hours ago (UTC); beat was last up three days ago; catch_up is 1 hour.
    two_hours_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    cron = f"{two_hours_ago.minute} {two_hours_ago.hour} * * *"
    path = schedules_file(tmp_path, monkeypatch,
                          entry("daily", "m.yaml", cron=cron, tz="UTC") + "    catch_up: 1h\n")
    seed_handled(settings, path, "daily", datetime.now(timezone.utc) - timedelta(days=3))
    beat = scheduler(settings, monkeypatch)
    entry_ = beat.schedule["daily"]
    assert beat.is_due(entry_)[0]
    schedule = {s.name: s for s in load_schedules(path)}["daily"]
    due = beat._due["daily"]
    assert due.missed == 2  # the two earlier days fold into the latest
    start = start_schedule(schedule, settings.with_overrides(schedules_file=path), State.from_url(settings.redis_url),
                           lambda job_id: pytest.fail("a missed time past its window must not start"),
                           finalize=finalize_job, token="t1", trigger="beat", scheduled_for=due.at, missed=due.missed)
    assert start.outcome == "skipped_missed"
    assert "past the catch_up window of 1h00m" in start.reason and "2 earlier missed" in start.reason
    assert State.from_url(settings.redis_url).schedule("daily").last()["outcome"] == "skipped_missed"


def test_two_beats_that_both_find_a_time_due_send_it_once(tmp_path, settings, monkeypatch, r):
    r.flushall()
    path = schedules_file(tmp_path, monkeypatch, entry("nightly", "m.yaml", cron="0 2 * * *", tz="UTC"))
    seed_handled(settings, path, "nightly", datetime.now(timezone.utc) - timedelta(days=1, hours=1))
    first, second = scheduler(settings, monkeypatch), scheduler(settings, monkeypatch)
    assert first.is_due(first.schedule["nightly"])[0] and second.is_due(second.schedule["nightly"])[0]
    sent = [beat.apply_async(beat.schedule["nightly"]) for beat in (first, second)]
    try:
        assert sent[0] is not None and sent[1] is None
        assert r.llen("editpipe") == 1  # one message on the workers' queue
        (message,) = [json.loads(m) for m in r.lrange("editpipe", 0, -1)]
        assert message["headers"]["task"] == "editpipe.run_schedule"
        assert not first.is_due(first.schedule["nightly"])[0]  # handled: not due again
    finally:
        r.flushall()


# --- Beat, workers, overlap -----------------------------------------------------------------


def beat_process(tmp_path: Path, settings: Settings, path: Path, n: int = 0) -> tuple[subprocess.Popen, Path]:
    env = worker_env(settings) | AWS_ENV | {"S3_ENDPOINT_URL": settings.s3_endpoint_url or "",
                                            "EDITPIPE_SCHEDULES": str(path)}
    log = tmp_path / f"beat-{n}.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "beat", "-s", str(tmp_path / f"beat-{n}"),
         "--loglevel", "INFO"],
        env=env, cwd=ROOT, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    return proc, log


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=20)


def test_beat_fires_a_due_schedule_and_its_job_runs_to_completion(tmp_path, fast, sim, workers, bucket, monkeypatch):
    manifest = small_manifest(tmp_path, f"s3://{bucket}/out")
    path = schedules_file(tmp_path, monkeypatch, entry("every-minute", str(manifest), cron="* * * * *",
                                                       tz="Pacific/Auckland", budget="0.50"))
    # Redis says beat last handled a time three minutes ago: the latest missed time is due at start.
    seed_handled(fast, path, "every-minute", datetime.now(timezone.utc) - timedelta(minutes=3))
    workers.start()
    beat, log = beat_process(tmp_path, fast, path)
    try:
        state = State.from_url(fast.redis_url or "")
        job = wait_for(lambda: next((j for j in state.jobs.recent() if j.schedule == "every-minute"), None), 90,
                       "beat to start the schedule", lambda: log.read_text() + workers.logs())
        status = wait_done(fast, job.id)
    finally:
        stop(beat)

    assert (status.status, status.succeeded, status.budget_usd) == ("succeeded", 2, Decimal("0.50"))
    assert sim.stats()["billed_count"] == 2
    # A minute tick that came while this start was still preparing is recorded as skipped, and
    # a skip is recorded at once while a start is recorded once submitted: so the records are
    # in the order they were written, not the order of the ticks. One started, the rest skipped.
    history = state.schedule("every-minute").history()
    started = [(h["trigger"], h["job_id"]) for h in history if h["outcome"] == "started"]
    assert [job_id for _, job_id in started] == [job.id]
    assert {h["outcome"] for h in history} <= {"started", "skipped_overlap"}
    assert "Sending due task every-minute (editpipe.run_schedule)" in log.read_text()


def test_a_time_missed_while_beat_was_down_runs_once_when_it_is_back_even_with_two_beats(
    tmp_path, fast, sim, workers, bucket, monkeypatch
):
    manifest = small_manifest(tmp_path, f"s3://{bucket}/out")
    # A nightly run, due at a time that passed an hour ago; beat was last up two days ago.
    hour_ago = datetime.now(timezone.utc) - timedelta(hours=1)
    path = schedules_file(tmp_path, monkeypatch,
                          entry("nightly", str(manifest), cron=f"{hour_ago.minute} {hour_ago.hour} * * *", tz="UTC"))
    seed_handled(fast, path, "nightly", datetime.now(timezone.utc) - timedelta(days=2))
    workers.start()
    # Two beats, started by mistake at the same moment.
    beats = [beat_process(tmp_path, fast, path, n) for n in range(2)]
    state = State.from_url(fast.redis_url or "")
    logs = lambda: "".join(log.read_text() for _, log in beats)  # noqa: E731
    try:
        job = wait_for(lambda: next((j for j in state.jobs.recent() if j.schedule == "nightly"), None), 90,
                       "beat to catch up the missed run", lambda: logs() + workers.logs())
        status = wait_done(fast, job.id)
        time.sleep(3)  # both beats keep ticking: neither sends the time again
    finally:
        for proc, _ in beats:
            stop(proc)

    assert status.status == "succeeded" and sim.stats()["billed_count"] == 2
    history = state.schedule("nightly").history()
    assert [h["outcome"] for h in history] == ["started"]  # one start, for one missed time
    (start,) = history
    assert start["trigger"] == "catch-up" and start["job_id"] == job.id
    # The cron time is hour_ago's minute, so the lateness is an hour plus the seconds past it (and the
    # catch-up's own few seconds): 1h00m or, across a minute boundary, 1h01m.
    assert re.search(r"caught up 1h0[01]m late", start["reason"]), start["reason"]
    assert f"the run due at {hour_ago:%Y-%m-%d %H:%M} UTC was missed" in start["reason"]
    assert "1 earlier missed time(s)" in start["reason"]
    assert logs().count("Sending due task nightly") in (1, 2)  # 2: both saw it due; the claim let one send
    assert [j.id for j in state.jobs.recent() if j.schedule == "nightly"] == [job.id]


def test_a_trigger_while_the_previous_run_is_active_is_skipped_and_recorded(
    tmp_path, fast, sim, workers, bucket, monkeypatch
):
    sim.configure(latency_s=4.0, jitter_s=0.0)
    path = schedules_file(tmp_path, monkeypatch, entry("nightly", str(small_manifest(tmp_path, f"s3://{bucket}/out"))))
    workers.start()
    state = State.from_url(fast.redis_url or "")
    records = state.schedule("nightly")

    first = start(fast, path, "nightly", token="first")
    # The next trigger comes the way beat sends it, to a worker process: the lock is in Redis.
    make_app(fast).send_task("editpipe.run_schedule", ("nightly",))
    skipped = wait_for(lambda: len(records.history()) == 2 and records.history()[0], 30, "the second trigger",
                       workers.logs)

    assert first.outcome == "started"
    assert (skipped["outcome"], skipped["job_id"]) == ("skipped_overlap", first.job_id)
    assert f"the previous run {first.job_id} is still" in skipped["reason"]
    assert [j.id for j in state.jobs.recent() if j.schedule == "nightly"] == [first.job_id]
    assert records.last() == skipped

    assert wait_done(fast, first.job_id).status == "succeeded"
    after = start(fast, path, "nightly", token="after")  # the finished run's lock is taken over
    assert after.outcome == "started" and after.job_id != first.job_id
    assert records.holder() == after.job_id
    assert [h["outcome"] for h in records.history()] == ["started", "skipped_overlap", "started"]
    wait_done(fast, after.job_id)


# --- Incremental nightly runs ---------------------------------------------------------------


def feed_csv(rows: list[list[str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["sku", "image_url", "title", "color"])
    writer.writerows(rows)
    return out.getvalue().encode()


def test_a_second_nightly_run_over_an_unchanged_feed_bills_nothing_and_two_edited_rows_bill_two_runs(
    tmp_path, fast, sim, workers, bucket, s3, monkeypatch
):
    for name, color in (("plain", (200, 160, 40)), ("new", (20, 60, 200))):
        s3.upload_file(str(make_image(tmp_path / f"{name}.png", color)), bucket, f"img/{name}.png")
    rows = [[f"sku-{i:03d}", f"s3://{bucket}/img/plain.png", f"item {i}", "gold"] for i in range(50)]
    s3.put_object(Bucket=bucket, Key="feeds/products.csv", Body=feed_csv(rows))
    s3.put_object(Bucket=bucket, Key="manifests/nightly.yaml", Body=(
        f"version: 1\nname: nightly\noutput: s3://{bucket}/out\n"
        f"catalog:\n  feed: s3://{bucket}/feeds/products.csv\n  id: sku\n  images: [image_url]\n"
        "  vars: [title, color]\n"
        "prompts:\n  - id: editorial\n    text: A portrait wearing the {color} {title}.\n"
        'output_key: "{image_set}/{prompt}/{variant}"\n').encode())
    path = schedules_file(tmp_path, monkeypatch, entry("nightly", f"s3://{bucket}/manifests/nightly.yaml"))
    workers.start(concurrency=8)
    state = State.from_url(fast.redis_url or "")

    def night(token: str) -> tuple[Start, JobStatus]:
        started = start(fast, path, "nightly", token)
        return started, wait_done(fast, started.job_id)

    first, first_status = night("night-1")
    assert (first_status.succeeded, sim.stats()["billed_count"]) == (50, 50)
    assert (first.changes.new, first.changes.changed, first.changes.unchanged) == (50, 0, 0)

    second, second_status = night("night-2")
    assert sim.stats()["billed_count"] == 50  # nothing more billed
    assert (second_status.status, second_status.skipped, second_status.spent_usd) == ("succeeded", 50, Decimal("0"))
    assert read_jsonl(s3, bucket, f"out/jobs/{second.job_id}/ledger.jsonl") == []
    assert state.jobs.fields(second.job_id, "runs_new", "runs_changed", "runs_unchanged") == ["0", "0", "50"]

    rows[7][2] = "item 7, now in rose gold"  # a var the prompt uses
    rows[31][1] = f"s3://{bucket}/img/new.png"  # another image
    s3.put_object(Bucket=bucket, Key="feeds/products.csv", Body=feed_csv(rows))
    third, third_status = night("night-3")

    stats = sim.stats()
    assert (stats["billed_count"], stats["billed_usd"]) == (52, "5.20")
    assert (third_status.succeeded, third_status.skipped, third_status.spent_usd) == (2, 48, Decimal("0.20"))
    assert state.jobs.fields(third.job_id, "runs_new", "runs_changed", "runs_unchanged") == ["0", "2", "48"]
    billed = {r["image_set"] for r in read_jsonl(s3, bucket, f"out/jobs/{third.job_id}/results.jsonl")
              if r["status"] == "succeeded"}
    assert billed == {"sku-007", "sku-031"}
    assert len(read_jsonl(s3, bucket, f"out/jobs/{third.job_id}/ledger.jsonl")) == 2


# --- The command line -----------------------------------------------------------------------


def test_schedules_lists_next_run_and_last_outcome_and_run_wait_exits_like_run(
    tmp_path, fast, sim, workers, bucket, monkeypatch
):
    manifest = small_manifest(tmp_path, f"s3://{bucket}/out")
    path = schedules_file(tmp_path, monkeypatch, entry("hourly", str(manifest), cron="0 * * * *", tz="Asia/Tokyo"),
                          entry("paused", str(manifest), enabled=False), entry("broken", "nowhere.yaml"))
    workers.start()
    cli = EditpipeGroup(name="editpipe", commands={"schedules": schedules})
    env = worker_env(fast) | AWS_ENV | {"S3_ENDPOINT_URL": fast.s3_endpoint_url or "", "EDITPIPE_SCHEDULES": str(path)}
    runner = CliRunner()

    ran = runner.invoke(cli, ["schedules", "run", "hourly", "--wait"], env=env)
    assert ran.exit_code == 0, ran.output
    job_id = ran.stdout.splitlines()[0]
    assert "hourly: runs 2 new, 0 changed, 0 unchanged" in ran.output
    assert re.search(rf"^\S+Z {re.escape(job_id)}: 2/2 done \(2 succeeded, 0 failed, 0 skipped\) · ", ran.stderr,
                     re.M) and "\x1b" not in ran.stderr, ran.stderr  # plain progress lines, not a bar

    listed = runner.invoke(cli, ["schedules", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    rows = {row["name"]: row for row in json.loads(listed.stdout)["schedules"]}
    next_hour = datetime.fromisoformat(rows["hourly"]["next_run"])
    assert next_hour.utcoffset() == timedelta(hours=9) and (next_hour.minute, next_hour.second) == (0, 0)
    assert timedelta(0) < next_hour - datetime.now(timezone.utc) <= timedelta(hours=1)
    last = rows["hourly"]["last"]
    assert (last["outcome"], last["trigger"], last["job_id"], last["job_status"]) == ("started", "manual", job_id,
                                                                                     "succeeded")
    assert rows["paused"]["next_run"] is None and rows["paused"]["last"] is None
    table = runner.invoke(cli, ["schedules"], env=env)
    assert table.exit_code == 0 and "hourly" in table.stdout and "succeeded" in table.stdout

    broken = runner.invoke(cli, ["schedules", "run", "broken"], env=env)
    assert broken.exit_code == 2
    assert f"{path}:17:15: manifest: schedule 'broken': no manifest at {tmp_path / 'nowhere.yaml'}" in broken.output
    assert State.from_url(fast.redis_url or "").schedule("broken").last()["outcome"] == "failed"
