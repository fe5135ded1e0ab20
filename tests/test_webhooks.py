"""Webhooks in: the provider's completion POSTs are collected at once, each run once;
polling stays the fallback."""

from __future__ import annotations

from decimal import Decimal

import httpx
import pytest
from pydantic import SecretStr

from conftest import many_runs_manifest, read_jsonl, run_job
from pipeline.webhooks import WebhookServer
from workers.celery_app import collect_sender

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def webhook_server(settings):
    hooked = settings.with_overrides(webhook_secret=SecretStr("hook-secret"))
    server = WebhookServer(hooked, collect_sender(hooked)).start()
    yield server
    server.stop()


def test_completed_predictions_are_collected_from_webhooks_without_polling(
    tmp_path, settings, sim, workers, bucket, s3, webhook_server
):
    hooked = settings.with_overrides(
        webhook_url=f"{webhook_server.base_url}/webhook", webhook_secret=SecretStr("hook-secret"),
        poll_initial_s=30.0, poll_max_s=30.0,  # a poll would come far too late to matter
    )
    workers.settings = hooked
    workers.start()

    status = run_job(hooked, many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=4))

    stats = sim.stats()
    received = httpx.get(f"{webhook_server.base_url}/stats").json()
    assert status.status == "succeeded" and status.succeeded == 8
    assert stats["webhooks_sent"] == 8 and received["collected"] == 8
    assert stats["polls"] == 0
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    assert len(ledger) == 8 and sum(Decimal(x["cost_usd"]) for x in ledger) == Decimal(stats["billed_usd"])


def test_a_forged_webhook_is_refused(webhook_server):
    response = httpx.post(f"{webhook_server.base_url}/webhook", params={"run": "some-job:0", "token": "0" * 32},
                          json={"id": "x", "status": "completed", "outputs": ["http://evil/x.png"]})
    assert response.status_code == 403
