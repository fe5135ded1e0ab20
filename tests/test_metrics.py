"""The fleet's Prometheus metrics: read from Redis by any process, so that a scrape of
`editpipe metrics-server` during and after a job run by two worker processes shows what the
simulator saw and billed, in an exposition Prometheus's own parser reads, with no per-run
label."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from conftest import AWS_ENV, ROOT, make_image
from pipeline.embedded import free_port, worker_env
from pipeline.metrics import exposition, fleet_registry
from pipeline.report import finalize_job
from pipeline.state import State
from pipeline.state.metrics import utc_day
from pipeline.submission import follow, prepare, submit
from pipeline.webhooks import WebhookServer
from workers.celery_app import collect_sender, job_enqueuer

PRICE = Decimal("0.10")
ALLOWED_LABELS = {"status", "error_kind", "job_id", "job_name", "schedule", "scope", "name", "day", "model",
                  "outcome", "reason", "le"}


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    """Every sample of one scrape, by name and labels; the text is parsed by prometheus_client."""
    text = httpx.get(url, timeout=10).text
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        assert family.name.startswith("editpipe_"), family.name
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def label_values(samples: Samples, label: str) -> set[str]:
    return {dict(key)[label] for _, key in samples if label in dict(key)}


@pytest.fixture
def metrics_url(settings) -> Iterator[str]:
    """`editpipe metrics-server` as its own process, on the workers' Redis."""
    port = free_port()
    env = {**worker_env(settings), **AWS_ENV, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", "from pipeline.cli import main; main()", "metrics-server",
                             "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/metrics"
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            break
        except httpx.TransportError:
            assert proc.poll() is None, proc.stdout.read().decode()
            time.sleep(0.05)
    yield url
    proc.terminate()
    assert proc.wait(timeout=10) == 0  # SIGTERM stops it cleanly


def catalog(tmp_path: Path, output: str, sets: int) -> Path:
    """``sets`` × 3 prompts, budget $5; the third prompt is refused for moderation (code 1200)."""
    make_image(tmp_path / "p.png")
    lines = "".join(f"\n  - id: s{i:02d}\n    images: [p.png]\n    vars: {{product: item {i}}}" for i in range(sets))
    path = tmp_path / "metered.yaml"
    path.write_text(
        f"version: 1\nname: metered\noutput: {output}\nbudget_usd: 5.00\nimage_sets:{lines}\nprompts:\n"
        "  - id: a\n    text: A model wearing the {product}.\n"
        "  - id: b\n    text: A flat-lay of the {product}.\n"
        "  - id: c\n    text: \"[sim:fail:1200] A refused picture of the {product}.\"\n"
        "output_key: \"{image_set}/{prompt}\"\n")
    return path


def test_a_two_worker_job_scraped_during_and_after_shows_what_the_simulator_billed(
        settings, sim, workers, tmp_path, bucket, metrics_url):
    sim.configure(latency_s=1.5, jitter_s=0.5)
    workers.settings = settings.with_overrides(daily_budget_usd=Decimal("100"))
    workers.start(2, concurrency=3)
    workers.wait_ready()
    state = State.from_url(settings.redis_url or "")
    manifest = catalog(tmp_path, f"s3://{bucket}/out", sets=12)  # 36 runs: 24 paid, 12 refused
    job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job,
                    schedule="nightly-metered")

    # During: the job's runs add up, what it spent is what its succeeded runs cost, and no
    # more than the simulator has billed by then.
    during = None
    deadline = time.monotonic() + 60
    while during is None:
        assert time.monotonic() < deadline, "never scraped the job half done"
        samples = scrape(metrics_url)
        runs = {s: value(samples, "editpipe_job_runs", job_id=job_id, status=s)
                for s in ("succeeded", "skipped", "failed", "unfinished")} if job_id in label_values(
                    samples, "job_id") else {}
        if runs and runs["succeeded"] > 0 and runs["unfinished"] > 0:
            during = samples
            billed = Decimal(sim.stats()["billed_usd"])
        else:
            time.sleep(0.2)
    assert sum(runs.values()) == value(during, "editpipe_job_runs_planned", job_id=job_id) == 36
    assert Decimal(str(value(during, "editpipe_job_spend_usd", job_id=job_id))) == PRICE * int(runs["succeeded"])
    assert Decimal(str(value(during, "editpipe_spend_usd_total"))) <= billed
    assert value(during, "editpipe_predictions_in_flight") <= value(during, "editpipe_predictions_in_flight_limit")
    assert value(during, "editpipe_starts_last_minute") <= value(during, "editpipe_starts_per_minute_limit")

    status = follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=120)
    assert status.done
    after = scrape(metrics_url)
    stats = sim.stats()
    billed = Decimal(stats["billed_usd"])
    assert stats["billed_count"] == 24 and billed == Decimal("2.40") and stats["duplicate_submissions"] == 0

    def usd(metric: str, /, **labels: str) -> Decimal:
        return Decimal(str(value(after, metric, **labels))).quantize(Decimal("0.000001"))

    # Counts are the simulator's.
    assert value(after, "editpipe_runs_finished_total", status="succeeded") == stats["completed"] == 24
    assert value(after, "editpipe_runs_finished_total", status="failed") == stats["failed"] == 12
    assert value(after, "editpipe_runs_failed_total", error_kind="moderation") == 12
    assert value(after, "editpipe_job_runs", job_id=job_id, status="unfinished") == 0
    assert value(after, "editpipe_starts_total") == stats["submits"] == 36
    assert value(after, "editpipe_rate_limited_total") == stats["count_429"] == 0
    assert value(after, "editpipe_predictions_in_flight") == 0
    assert value(after, "editpipe_queue_runs", job_id=job_id) == 0
    # Spend is what the simulator billed: in total, for the job, its schedule and the UTC day,
    # and each budget's remainder is the budget less that.
    assert usd("editpipe_spend_usd_total") == billed
    assert usd("editpipe_job_spend_usd", job_id=job_id) == billed
    assert usd("editpipe_schedule_spend_usd_total", schedule="nightly-metered") == billed
    assert usd("editpipe_day_spend_usd", day=utc_day()) == billed
    assert usd("editpipe_budget_remaining_usd", scope="job", name=job_id) == Decimal("5.00") - billed
    assert usd("editpipe_budget_remaining_usd", scope="schedule", name="nightly-metered") == Decimal("5.00") - billed
    assert usd("editpipe_budget_usd", scope="day", name=utc_day()) == Decimal("100")
    assert usd("editpipe_budget_remaining_usd", scope="day", name=utc_day()) == Decimal("100") - billed
    # Histograms: one latency per prediction the poller found completed, one queue wait per
    # run's first answered submit.
    model = next(iter(label_values(after, "model")))
    assert value(after, "editpipe_prediction_latency_seconds_count", model=model) == 24
    assert value(after, "editpipe_prediction_latency_seconds_bucket", model=model, le="+Inf") == 24
    assert 1.0 <= value(after, "editpipe_prediction_latency_seconds_sum", model=model) / 24 <= 4.0
    assert value(after, "editpipe_queue_wait_seconds_count") == 36
    # Every result GET the simulator saw came from a poller check (no webhooks here); checks
    # that found the prediction running, completed or failing for now each made one.
    polls = {o: value(after, "editpipe_polls_total", outcome=o) for o in ("running", "completed", "error", "other")}
    assert polls["running"] + polls["completed"] + polls["error"] <= stats["polls"] <= sum(polls.values())
    assert polls["completed"] >= 24
    # Only this job is labelled, and never a run.
    assert label_values(after, "job_id") == {job_id}
    assert value(after, "editpipe_redis_up") == 1


def test_429s_are_counted_as_the_simulator_answered_them(settings, sim, workers, tmp_path, bucket, metrics_url):
    # editpipe is told ultra (500 at once); the account really allows 2: the provider says 429.
    sim.configure(latency_s=1.0, jitter_s=0.2, max_concurrent=2)
    workers.start(1, concurrency=3)
    workers.wait_ready()
    state = State.from_url(settings.redis_url or "")
    manifest = catalog(tmp_path, f"s3://{bucket}/out", sets=2)
    job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job)
    assert follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=180).done
    after = scrape(metrics_url)
    stats = sim.stats()
    assert stats["count_429"] > 0
    assert value(after, "editpipe_rate_limited_total") == stats["count_429"]
    # Every start the limits admitted reached the provider: accepted, or answered 429.
    assert value(after, "editpipe_starts_total") == stats["submits"]


def test_the_webhook_server_counts_refused_posts_and_serves_the_metrics(settings, sim, workers):
    server = WebhookServer(settings.with_overrides(webhook_secret=SecretStr("hook-secret")), lambda *a: None,
                           metrics=True).start()
    try:
        assert httpx.post(f"{server.base_url}/webhook", content=b"{}").status_code == 401  # unsigned
        deadline = time.monotonic() + 10
        while True:
            samples = scrape(f"{server.base_url}/metrics")
            if value(samples, "editpipe_webhooks_received_total") == 1:
                break
            assert time.monotonic() < deadline, "the webhook's count never reached Redis"
            time.sleep(0.2)
        assert value(samples, "editpipe_webhooks_refused_total", reason="unsigned") == 1
        assert value(samples, "editpipe_webhooks_refused_total", reason="bad_signature") == 0
    finally:
        server.stop()


def test_a_scrape_with_redis_away_answers_redis_down(settings):
    away = settings.with_overrides(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    text = exposition(fleet_registry(away, ride_out_s=0.5)).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert list(families) == ["editpipe_redis_up"]
    assert families["editpipe_redis_up"].samples[0].value == 0


def test_the_grafana_dashboard_graphs_only_metrics_the_exposition_has(settings, r):
    families = list(text_string_to_metric_families(exposition(fleet_registry(settings)).decode()))
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exposed = {family.name + suffix for family in families for suffix in suffixes[family.type]}
    dashboard = json.loads((ROOT / "configs" / "grafana" / "editpipe.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\beditpipe_\w+", expr)}
    assert len(used) >= 20
    assert used <= exposed, used - exposed


def test_webhooks_received_and_collected_are_the_simulators_and_the_servers_own(
        settings, sim, workers, tmp_path, bucket):
    server = WebhookServer(settings.with_overrides(webhook_secret=SecretStr("hook-secret")),
                           collect_sender(settings), metrics=True).start()
    try:
        # Webhooks on, and a first poll far too late to matter: every run is collected through
        # its webhook.
        hooked = settings.with_overrides(webhook_url=f"{server.base_url}/webhook",
                                         webhook_secret=SecretStr("hook-secret"), poll_initial_s=30.0, poll_max_s=30.0)
        workers.settings = hooked
        workers.start()
        state = State.from_url(settings.redis_url or "")
        manifest = catalog(tmp_path, f"s3://{bucket}/out", sets=3)  # 9 runs, 3 refused
        job_id = submit(prepare(manifest, hooked), state, job_enqueuer(hooked), finalize=finalize_job)
        assert follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=120).done
        stats, own = sim.stats(), httpx.get(f"{server.base_url}/stats").json()
        deadline = time.monotonic() + 10
        while value(samples := scrape(f"{server.base_url}/metrics"), "editpipe_webhooks_received_total") < \
                own["received"]:
            assert time.monotonic() < deadline, "the server's counts never reached Redis"
            time.sleep(0.2)
    finally:
        server.stop()
    assert stats["webhooks_sent"] == own["received"] == value(samples, "editpipe_webhooks_received_total") == 9
    assert value(samples, "editpipe_webhooks_collected_total") == own["collected"] == 6
    assert sum(value(samples, "editpipe_webhooks_refused_total", reason=reason)
               for reason in label_values(samples, "reason")) == 0
    assert value(samples, "editpipe_runs_finished_total", status="succeeded") == stats["completed"] == 6
