"""Progress without a terminal: a command followed from cron, CI or a log file prints plain
lines (no bar squeezed into 80 columns, no ANSI codes, no carriage returns)."""

from __future__ import annotations

import io
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from click.testing import CliRunner
from conftest import AWS_ENV, many_runs_manifest
from test_cli import editpipe, quickstart  # noqa: F401  (the fixture, used by name)

from pipeline.cli.main import main
from pipeline.embedded import worker_env

from pipeline.cli.progress import PlainProgress, RateWindow, eta_s, format_duration, format_rate, plain_line
from pipeline.state import JobStatus

LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<job>\S+): (?P<done>\d+)/(?P<total>\d+) done "
    r"\((?P<ok>\d+) succeeded, (?P<failed>\d+) failed, (?P<skipped>\d+) skipped\) · "
    r"\$\d+\.\d\d( of \$\d+\.\d\d)?"
    r"( · [\d.]+ runs/(s|min))?"
    r"( · ETA \d+[smhd]\w*| · (succeeded|failed|cancelled|budget_exhausted)( after \w+)?)?$"
)


def job(finished: int, total: int = 400, failed: int = 0, status: str = "running",
        spent: str = "0.00", budget: str | None = None) -> JobStatus:
    return JobStatus(
        id="job-1", name="job", status=status, output="s3://b", total=total,
        succeeded=finished - failed, skipped=0, failed=failed, finished=finished,
        spent_usd=Decimal(spent), unconfirmed_usd=Decimal(0), estimated_usd=Decimal(0),
        budget_usd=None if budget is None else Decimal(budget), created_at="", finished_at="", error="",
    )


def test_run_simulate_into_a_pipe_prints_plain_progress_lines(quickstart: Path):  # noqa: F811
    done = editpipe("run", str(quickstart), "--simulate", cwd=quickstart.parent, timeout=180)

    assert done.returncode == 0, done.stdout + done.stderr
    for stream in (done.stdout, done.stderr):
        assert "\x1b" not in stream and "\r" not in stream
        assert "━" not in stream
    lines = [line for line in done.stderr.splitlines() if re.match(r"^\d{4}-\d\d-\d\dT", line)]
    assert len(lines) >= 2, done.stderr  # the first at once, the last at the end
    for line in lines:
        assert LINE.match(line), line
    first, last = LINE.match(lines[0]), LINE.match(lines[-1])
    assert first["total"] == "12" and int(first["done"]) < 12
    assert last["done"] == last["total"] == last["ok"] == "12" and last["failed"] == "0"
    assert "· $1.20 of $2.00" in lines[-1] and lines[-1].split(" · ")[-1].startswith("succeeded after ")
    assert {LINE.match(line)["job"] for line in lines} == {last["job"]}
    assert f"Job {last['job']}: succeeded" in done.stdout


def test_submit_wait_under_a_test_runner_prints_plain_lines_on_stderr(tmp_path, settings, sim, workers, bucket):
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=20)
    workers.start()
    env = worker_env(settings) | AWS_ENV | {"S3_ENDPOINT_URL": settings.s3_endpoint_url or ""}

    ran = CliRunner().invoke(main, ["submit", str(manifest), "--wait"], env=env)

    assert ran.exit_code == 0, ran.output
    job_id = ran.stdout.splitlines()[0]
    assert "\x1b" not in ran.output and "\r" not in ran.output and "━" not in ran.output
    lines = [LINE.match(line) for line in ran.stderr.splitlines() if re.match(r"^\d{4}-\d\d-\d\dT", line)]
    assert len(lines) >= 2 and all(lines), ran.stderr
    assert {m["job"] for m in lines} == {job_id}
    assert (lines[-1]["done"], lines[-1]["total"], lines[-1]["ok"]) == ("40", "40", "40"), ran.stderr
    assert int(lines[0]["done"]) < 40


def test_rate_and_eta_formatting():
    assert [format_duration(s) for s in (0, 4.4, 59, 60, 72, 3599, 3600, 7380, 90000)] == [
        "0s", "4s", "59s", "1m00s", "1m12s", "59m59s", "1h00m", "2h03m", "1d01h"]
    assert format_rate(3.94) == "3.9 runs/s" and format_rate(42.4) == "42 runs/s"
    assert format_rate(0.05) == "3.0 runs/min" and format_rate(0) == "0.0 runs/s"
    assert eta_s(280, 3.9) == 280 / 3.9
    assert eta_s(280, None) is None and eta_s(280, 0) is None  # no rate yet, or stalled

    at = datetime(2026, 12, 3, 9, 10, 5, tzinfo=timezone.utc)
    line = plain_line(job(120, failed=2, spent="11.80"), 280 / 72, at)
    assert line == ("2026-12-03T09:10:05Z job-1: 120/400 done (118 succeeded, 2 failed, 0 skipped)"
                    " · $11.80 · 3.9 runs/s · ETA 1m12s")
    assert plain_line(job(0), None, at) == (
        "2026-12-03T09:10:05Z job-1: 0/400 done (0 succeeded, 0 failed, 0 skipped) · $0.00")
    end = plain_line(job(400, status="succeeded", spent="40.00", budget="50.00"), 4.0, at, elapsed_s=101)
    assert end.endswith("· $40.00 of $50.00 · 4.0 runs/s · succeeded after 1m41s") and "ETA" not in end
    for text in (line, end):
        assert LINE.match(text)


def test_rate_is_over_the_recent_window_not_since_the_start():
    window = RateWindow(window_s=30)
    window.add(0, 0)
    assert window.rate() is None
    window.add(0.5, 1)
    assert window.rate() is None  # half a second says nothing yet
    for t in range(1, 61):  # 10 runs/s for 30 s, then 1 run/s for 30 s
        window.add(t, 10 * t if t <= 30 else 300 + (t - 30))
    assert window.rate() == 1.0


def test_plain_progress_prints_at_once_then_every_few_seconds_and_at_the_end():
    t = [0.0]
    out = io.StringIO()
    start = datetime(2026, 12, 3, 9, 0, tzinfo=timezone.utc)
    reporter = PlainProgress(out, every_s=5, clock=lambda: t[0], wall=lambda: start + timedelta(seconds=t[0]))
    for step in range(25):  # polled every 0.5 s, 4 runs a second
        t[0] = step * 0.5
        reporter(job(2 * step, total=48))
    t[0] = 12.5
    reporter(job(48, total=48, status="succeeded", spent="4.80"))

    lines = out.getvalue().splitlines()
    assert [line[:20] for line in lines] == [
        "2026-12-03T09:00:00Z", "2026-12-03T09:00:05Z", "2026-12-03T09:00:10Z", "2026-12-03T09:00:12Z"]
    assert lines[0].endswith("0/48 done (0 succeeded, 0 failed, 0 skipped) · $0.00")
    assert lines[1].endswith("20/48 done (20 succeeded, 0 failed, 0 skipped) · $0.00 · 4.0 runs/s · ETA 7s")
    assert lines[-1].endswith(
        "48/48 done (48 succeeded, 0 failed, 0 skipped) · $4.80 · 3.8 runs/s · succeeded after 12s")
    assert all(LINE.match(line) for line in lines)
