"""Budget alerts: one POST per threshold (50, 80, 100 %) a job's, a schedule's or the day's
spend crosses, never repeated, with what was spent and what is left.

The jobs run on real worker processes against the simulator; the alerts go to a small HTTP
receiver on a loopback port. The money is checked against what the simulator billed.
"""

from __future__ import annotations

import json
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import make_image, many_runs_manifest, run_job
from pipeline.alerts import HOLD_S, send_due
from pipeline.ledger import to_micros
from pipeline.report import finalize_job
from pipeline.schedules import load_schedules, start_schedule
from pipeline.settings import Settings
from pipeline.state import State
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer

pytestmark = pytest.mark.timeout(240)


class Receiver:
    """A webhook on a loopback port: records every POST (body and headers), answers ``status``."""

    def __init__(self, status: int = 200):
        self.status = status
        self.posts: list[tuple[dict, dict]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with receiver._lock:
                    receiver.posts.append((body, dict(self.headers)))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/secret-token"

    def bodies(self) -> list[dict]:
        with self._lock:
            return [body for body, _ in self.posts]

    def wait_for(self, count: int, timeout_s: float = 30) -> list[dict]:
        deadline = time.monotonic() + timeout_s
        while len(self.bodies()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.bodies()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def fast(settings: Settings, workers) -> Settings:
    """Account limits that never slow a test down, for this process and the workers."""
    fast = settings.with_overrides(images_per_minute=6000, max_concurrent=50)
    workers.settings = fast
    return fast


def by_threshold(bodies: list[dict]) -> list[tuple[int, str, str, str]]:
    return sorted((b["threshold_pct"], b["budget_usd"], b["spent_usd"], b["remaining_usd"]) for b in bodies)


# A watchdog looks for due alerts every 2 s: after this long with nothing new, nothing is coming.
QUIET_S = 6


def test_a_one_dollar_job_at_ten_cents_a_run_posts_exactly_three_alerts_with_spent_and_left(
        tmp_path, fast, sim, workers, bucket, receiver, state):
    workers.settings = fast.with_overrides(alert_url=receiver.url)
    workers.start(count=2, concurrency=4)
    workers.wait_ready()
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=7, extra="budget_usd: 1.00\n")

    status = run_job(fast, manifest)

    assert status.status == "budget_exhausted" and status.spent_usd == Decimal("1.00")
    assert Decimal(sim.stats()["billed_usd"]) == Decimal("1.00")
    bodies = receiver.wait_for(3)
    time.sleep(QUIET_S)
    bodies = receiver.bodies()
    assert by_threshold(bodies) == [(50, "1.00", "0.50", "0.50"), (80, "1.00", "0.80", "0.20"),
                                    (100, "1.00", "1.00", "0.00")], bodies
    assert {(b["event"], b["budget"], b["id"], b["job_id"]) for b in bodies} == {
        ("budget_alert", "job", status.id, status.id)}
    assert [h["Idempotency-Key"] for _, h in receiver.posts] == [b["alert_id"] for b in bodies]
    assert len({b["alert_id"] for b in bodies}) == 3
    assert sorted(h["outcome"] for h in state.alerts.history()) == ["delivered"] * 3
    assert state.alerts.pending() == []


def finish(state: State, job_id: str, index: int, price: str = "0.10"):
    """A run charged and finished, as a collect does it (the real script, no worker)."""
    line = {"prediction_id": f"pred-{job_id}-{index}", "run_key": f"k{index}", "job_id": job_id,
            "model": "m", "cost_usd": price, "charged_at": "2026-01-01T00:00:00.000Z", "kind": "charge"}
    return state.runs.finish_run(job_id, index, outcome="succeeded", result={"index": index}, ledger_line=line,
                                 cost_micros=to_micros(Decimal(price)))


def charge(state: State, job_id: str, index: int, price: str = "0.10"):
    """One run's price reserved before its submit, then charged as it finishes."""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert state.budget.reserve(job_id, index, Decimal(price), day=day, day_cap=None) == 1
    return finish(state, job_id, index, price)


def recorded_job(tmp_path: Path, bucket: str, settings: Settings, state: State, runs: int, budget: str) -> str:
    """A job recorded with ``runs`` runs and ``budget``, handed to no worker."""
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=runs, prompts=1,
                                  extra=f"budget_usd: {budget}\n")
    return submit(prepare(manifest, settings), state, lambda job_id: None, finalize=finalize_job)


def test_a_redelivered_charge_claims_no_alert_again_and_two_senders_post_each_alert_once(
        tmp_path, settings, workers, bucket, receiver, state):
    job_id = recorded_job(tmp_path, bucket, settings, state, runs=12, budget="1.00")
    for index in range(10):
        charge(state, job_id, index)
    assert sorted(a.threshold for a in state.alerts.pending()) == [50, 80, 100]
    # A redelivered collect finds its run finished: nothing is charged, nothing claimed.
    for index in (4, 7, 9):
        assert finish(state, job_id, index).code == -1
    assert len(state.alerts.pending()) == 3

    # A sender that took one alert and died holds it for HOLD_S: nobody sends it meanwhile.
    dead = state.alerts.take(HOLD_S, most=1)
    alive = settings.with_overrides(alert_url=receiver.url)
    # Two senders at once (two workers' tasks), then a redelivered message: each alert once.
    senders = [threading.Thread(target=send_due, args=(state.alerts, alive)) for _ in range(2)]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    assert send_due(State.from_url(settings.redis_url).alerts, alive) == 0
    bodies = receiver.bodies()
    assert sorted(b["threshold_pct"] for b in bodies) == sorted({50, 80, 100} - {dead[0].threshold})
    assert [a.alert_id for a in state.alerts.pending()] == [dead[0].alert_id]


def test_an_alert_the_webhook_refuses_for_good_is_logged_recorded_failed_and_never_sent_again(
        tmp_path, settings, workers, bucket, state, caplog):
    refusing = Receiver(status=503)
    try:
        job_id = recorded_job(tmp_path, bucket, settings, state, runs=2, budget="0.20")
        charge(state, job_id, 0)
        alive = settings.with_overrides(alert_url=refusing.url)
        with caplog.at_level("ERROR", logger="pipeline.alerts"):
            assert send_due(state.alerts, alive) == 0
        assert len(refusing.bodies()) == 4  # notify's four tries, then given up
        assert "not delivered" in caplog.text and "secret-token" not in caplog.text
        assert [h["outcome"] for h in state.alerts.history()] == ["failed"]
        assert send_due(state.alerts, alive) == 0 and len(refusing.bodies()) == 4
    finally:
        refusing.close()


def test_a_schedule_budget_alerts_its_notify_url_and_the_day_budget_alerts_the_alert_url(
        tmp_path, fast, sim, workers, bucket, receiver, state):
    day_receiver = Receiver()
    try:
        fleet = fast.with_overrides(alert_url=day_receiver.url, daily_budget_usd=Decimal("0.50"))
        workers.settings = fleet
        workers.start(count=2, concurrency=4)
        workers.wait_ready()
        make_image(tmp_path / "p.png")
        scheduled = many_runs_manifest(tmp_path, f"s3://{bucket}/nightly", sets=4, prompts=1)
        path = tmp_path / "schedules.yaml"
        path.write_text(f"schedules:\n  - name: nightly\n    cron: \"0 2 * * *\"\n    timezone: UTC\n"
                        f"    manifest: {scheduled}\n    budget_usd: 0.30\n    notify: {receiver.url}\n")
        schedule = load_schedules(path)[0]
        start = start_schedule(schedule, fleet.with_overrides(schedules_file=path), state, job_enqueuer(fleet),
                               finalize=finalize_job, token="t1", trigger="manual")
        nightly = follow(state, start.job_id, lambda s: None, 0.2, 90)
        assert nightly.done and nightly.spent_usd == Decimal("0.30")
        other = many_runs_manifest(tmp_path / "other", f"s3://{bucket}/other", sets=4, prompts=1)
        plain = run_job(fleet, other)
        assert plain.spent_usd == Decimal("0.20")  # the day's $0.50 is used up
        assert Decimal(sim.stats()["billed_usd"]) == Decimal("0.50")

        alerts = [b for b in receiver.wait_for(4) if b.get("event") == "budget_alert"]  # + the job summary
        days = day_receiver.wait_for(3)
        time.sleep(QUIET_S)
        assert by_threshold(alerts) == [(50, "0.30", "0.20", "0.10"), (80, "0.30", "0.30", "0.00"),
                                        (100, "0.30", "0.30", "0.00")], alerts
        assert {(b["budget"], b["id"], b["job_id"]) for b in alerts} == {("schedule", "nightly", nightly.id)}
        assert by_threshold(days) == [(50, "0.50", "0.30", "0.20"), (80, "0.50", "0.40", "0.10"),
                                      (100, "0.50", "0.50", "0.00")], days
        today = time.strftime("%Y-%m-%d", time.gmtime())
        assert {(b["budget"], b["id"]) for b in days} == {("day", today)}
        assert len([b for b in receiver.bodies() if b.get("event") == "budget_alert"]) == 3
        assert len(day_receiver.bodies()) == 3
    finally:
        day_receiver.close()
