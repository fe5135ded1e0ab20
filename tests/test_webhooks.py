"""Webhooks in: the provider's signed completion POSTs are collected at once, each run once;
a POST the account did not sign (forged, stale, replayed, unsigned) is refused and changes
nothing; what is downloaded is what the provider's own answer names; polling stays the
fallback. The simulator signs and retries its webhooks as the provider documents."""

from __future__ import annotations

import json
import threading
import time
import uuid
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from pydantic import SecretStr

from conftest import API_KEY, make_image, many_runs_manifest, read_jsonl, run_job
from pipeline.callbacks import callback_url, run_token
from pipeline.provider import WaveSpeedClient
from pipeline.report import finalize_job
from pipeline.simulator import SimConfig
from pipeline.simulator.webhooks import new_event_id, signed_headers
from pipeline.state import State
from pipeline.submission import follow, prepare, submit
from pipeline.webhook_signature import matches, read_headers
from pipeline.webhooks import SECRET_REFETCH_S, WebhookServer
from workers.celery_app import collect_sender, job_enqueuer

pytestmark = pytest.mark.timeout(120)
URL_SECRET = SecretStr("hook-secret")


class Receiver:
    """An HTTP server of the test's own that records every request and answers the statuses
    it is given in turn (the last one ever after)."""

    def __init__(self, statuses: tuple[int, ...] = (200,)):
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        statuses_left = list(statuses)
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                seen.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                status = statuses_left.pop(0) if len(statuses_left) > 1 else statuses_left[0]
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def trap():
    """Where a forged webhook points its outputs: nothing may ever fetch from it."""
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture
def webhook_server(settings):
    hooked = settings.with_overrides(webhook_secret=URL_SECRET)
    server = WebhookServer(hooked, collect_sender(hooked)).start()
    yield server
    server.stop()


def hooked_settings(settings, server: WebhookServer):
    """Webhooks on, and a first poll far too late to matter: what is collected in time came
    through a webhook."""
    return settings.with_overrides(webhook_url=f"{server.base_url}/webhook", webhook_secret=URL_SECRET,
                                   poll_initial_s=30.0, poll_max_s=30.0)


def server_stats(server: WebhookServer) -> dict:
    return httpx.get(f"{server.base_url}/stats").json()


def test_completed_predictions_are_collected_from_signed_webhooks_without_polling(
    tmp_path, settings, sim, workers, bucket, s3, webhook_server
):
    hooked = hooked_settings(settings, webhook_server)
    workers.settings = hooked
    workers.start()

    status = run_job(hooked, many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=4))

    stats, received = sim.stats(), server_stats(webhook_server)
    assert status.status == "succeeded" and status.succeeded == 8
    assert stats["webhooks_sent"] == 8 and stats["webhooks_retried"] == 0 and stats["webhooks_failed"] == 0
    assert received["collected"] == 8 and received["refused"] == 0 and received["unavailable"] == 0
    # Each prediction was read once, by the webhook server asking the provider; no worker polled.
    assert stats["polls"] == 8 and all(p["polls"] == 1 for p in sim.predictions())
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    assert len(ledger) == 8 and sum(Decimal(x["cost_usd"]) for x in ledger) == Decimal(stats["billed_usd"])


def test_forged_stale_replayed_and_unsigned_webhooks_are_refused_and_change_nothing(
    tmp_path, settings, sim, workers, bucket, s3, r, webhook_server, trap
):
    sim.configure(latency_s=6.0, jitter_s=0.0)  # the run stays in flight while it is attacked
    hooked = hooked_settings(settings, webhook_server)
    workers.settings = hooked
    workers.start()
    store = State.from_url(hooked.redis_url or "")
    job_id = submit(prepare(many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=1, prompts=1), hooked),
                    store, job_enqueuer(hooked), finalize=finalize_job)
    deadline = time.monotonic() + 30
    while (prediction_id := store.runs.prediction_of(job_id, 0)) is None:
        assert time.monotonic() < deadline, "the run was not submitted"
        time.sleep(0.1)
    url = callback_url(hooked, job_id, 0)
    secret = sim.config.webhook_secret
    lie = json.dumps({"id": prediction_id, "status": "completed", "outputs": [f"{trap.url}/evil.png"]}).encode()

    def post(body: bytes, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(url, content=body, headers={"Content-Type": "application/json", **headers})

    def snapshot() -> tuple:
        return (store.runs.states([(job_id, 0)]), store.runs.results(job_id), store.runs.ledger(job_id),
                store.jobs.status(job_id).to_dict(), sorted(r.keys(f"ep:job:{job_id}:collecting:*")))

    before = snapshot()
    unsigned = post(lie, {})
    forged = post(lie, signed_headers("whsec_not-the-accounts-key", new_event_id(), lie))
    stale = post(lie, signed_headers(secret, new_event_id(), lie, timestamp=int(time.time()) - 301))
    early = post(lie, signed_headers(secret, new_event_id(), lie, timestamp=int(time.time()) + 301))
    # Signed by the account, but the provider says the prediction is still processing: taken,
    # and nothing is downloaded, since the body alone never decides what a worker fetches.
    event = new_event_id()
    genuine = post(lie, signed_headers(secret, event, lie))
    replayed = post(lie, signed_headers(secret, event, lie))
    after = snapshot()

    assert [x.status_code for x in (unsigned, forged, stale, early)] == [401] * 4
    assert genuine.status_code == 200 and replayed.status_code == 401
    assert after == before and before[0][0].prediction_id == prediction_id and not before[0][0].finished
    assert server_stats(webhook_server)["refused_by"] == {"unsigned": 1, "stale": 2, "bad signature": 1, "replayed": 1}
    for response in (unsigned, forged, stale, replayed):
        assert secret.removeprefix("whsec_") not in response.text and API_KEY not in response.text

    status = follow(store, job_id, lambda s: None, interval_s=0.2, timeout_s=60)
    assert status.status == "succeeded" and status.succeeded == 1
    # Collected through the provider's own webhook (before any poll), with the provider's output.
    assert server_stats(webhook_server)["collected"] == 1 and sim.stats()["webhooks_sent"] == 1
    ledger = read_jsonl(s3, bucket, f"out/jobs/{job_id}/ledger.jsonl")
    assert [x["prediction_id"] for x in ledger] == [prediction_id]

    # A new event for a prediction already collected through a webhook is a replay too.
    collected = snapshot()
    real = json.dumps({"id": prediction_id, "status": "completed", "outputs": []}).encode()
    again = post(real, signed_headers(secret, new_event_id(), real))
    assert again.status_code == 401 and snapshot() == collected
    assert trap.requests == [], "a worker fetched from where a webhook body pointed"


def test_a_webhook_answered_503_is_taken_when_the_provider_sends_it_again(
    tmp_path, settings, sim, workers, bucket, s3, webhook_server
):
    hooked = hooked_settings(settings, webhook_server)
    send = collect_sender(hooked)
    calls: list[tuple] = []

    def broker_away_once(*args) -> None:
        calls.append(args)
        if len(calls) == 1:
            raise ConnectionError("the broker is not answering")  # what kombu raises past its retries
        send(*args)

    flaky = WebhookServer(settings.with_overrides(webhook_secret=URL_SECRET), broker_away_once).start()
    try:
        hooked = hooked_settings(settings, flaky)
        workers.settings = hooked
        workers.start()
        status = run_job(hooked, many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=1, prompts=1))
        received = server_stats(flaky)
    finally:
        flaky.stop()

    stats = sim.stats()
    assert status.status == "succeeded" and status.succeeded == 1
    assert received["unavailable"] == 1 and received["collected"] == 1 and received["refused"] == 0
    assert stats["webhooks_refused"] == 1 and stats["webhooks_retried"] == 1 and stats["webhooks_sent"] == 1
    assert len(calls) == 2 and calls[0] == calls[1]
    assert stats["polls"] == 2  # the provider asked once per delivery; no worker polled


def test_the_simulator_signs_each_attempt_and_keeps_the_event_id_across_retries(tmp_path, sim):
    receiver = Receiver(statuses=(503, 500, 204))
    defaults = SimConfig()
    sim.configure(webhook_attempts=3, webhook_retry_s=0.2)
    try:
        with WaveSpeedClient(sim.base_url, API_KEY) as client:
            secret = client.webhook_secret()
            image = client.upload(make_image(tmp_path / "in.png"))
            prediction = client.submit("/api/v3/openai/gpt-image-2/edit", {"images": [image], "prompt": "p"},
                                       webhook=f"{receiver.url}/hook")
            deadline = time.monotonic() + 30
            while len(receiver.requests) < 3:
                assert time.monotonic() < deadline, f"only {len(receiver.requests)} attempts arrived"
                time.sleep(0.05)
            answer = client.result(prediction.id)
        keyless = httpx.get(f"{sim.base_url}/api/v3/webhook/secret")
    finally:
        sim.configure(webhook_attempts=defaults.webhook_attempts, webhook_retry_s=defaults.webhook_retry_s)
        receiver.stop()

    assert keyless.status_code == 401
    assert f"whsec_{secret}" == sim.config.webhook_secret
    assert len({headers["webhook-id"] for _, headers, _ in receiver.requests}) == 1
    for path, headers, body in receiver.requests:
        signed = read_headers(headers, time.time())  # a fresh timestamp on each attempt
        assert path == "/hook" and headers["webhook-signature"].startswith("v3,")
        assert matches(secret, signed, body) and not matches(secret + "x", signed, body)
        data = json.loads(body)  # the prediction's data object, as the result answer has it
        assert (data["id"], data["status"], data["outputs"]) == (prediction.id, answer.status, answer.outputs)
    stats = sim.stats()
    assert stats["webhooks_sent"] == 1 and stats["webhooks_retried"] == 2 and stats["webhooks_refused"] == 2
    assert stats["webhooks_failed"] == 0


def test_a_rotated_secret_is_fetched_again_at_most_once_a_minute(tmp_path, settings, sim, state):
    """At the production refetch bound (60 s), so this test waits a minute."""
    hooked = settings.with_overrides(webhook_secret=URL_SECRET)
    job_id = f"rotation-{uuid.uuid4().hex[:8]}"
    with WaveSpeedClient(sim.base_url, API_KEY) as client:  # two predictions the provider made
        image = client.upload(make_image(tmp_path / "in.png"))
        made = [client.submit("/api/v3/openai/gpt-image-2/edit", {"images": [image], "prompt": f"p{i}"})
                for i in range(2)]
        deadline = time.monotonic() + 30
        while not all(client.result(p.id).completed for p in made):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    for index, prediction in enumerate(made):
        state.runs.record_prediction(job_id, index, prediction.id)
    sent: list[tuple] = []
    server = WebhookServer(hooked, lambda *args: sent.append(args)).start()
    old_secret = sim.config.webhook_secret

    def post(index: int, secret: str) -> int:
        body = json.dumps({"id": made[index].id, "status": "completed", "outputs": []}).encode()
        return httpx.post(f"{server.base_url}/webhook", content=body, params={
            "run": f"{job_id}:{index}", "token": run_token(URL_SECRET.get_secret_value(), job_id, index)},
            headers=signed_headers(secret, new_event_id(), body)).status_code

    try:
        assert post(0, old_secret) == 200  # the secret is fetched with this first webhook
        fetched = time.monotonic()
        new_secret = f"whsec_{uuid.uuid4().hex}"
        sim.configure(webhook_secret=new_secret)
        assert post(1, new_secret) == 401  # within the minute: not fetched again
        time.sleep(max(0.0, fetched + SECRET_REFETCH_S + 1 - time.monotonic()))
        assert post(1, new_secret) == 200  # fetched again: the new secret signs
        assert post(0, old_secret) == 401  # and the old one no longer does
    finally:
        server.stop()
        sim.configure(webhook_secret=old_secret)
    assert [args[2] for args in sent] == [made[0].id, made[1].id]


def test_a_callback_naming_a_run_whose_submit_answer_was_lost_settles_it_to_that_prediction(
    tmp_path, settings, sim, workers, bucket, s3, webhook_server
):
    # Every run's first submit answer is dropped after the provider made the prediction; its
    # signed webhook, to the URL only that run's submit gave, names the run before any look.
    sim.configure(latency_s=1.0, jitter_s=0.0)
    hooked = hooked_settings(settings, webhook_server)
    workers.settings = hooked
    workers.start()
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=3, prompts=1)
    manifest.write_text(manifest.read_text().replace("text: Prompt 0 for the {product}.",
                                                         'text: "[sim:drop-once] Prompt 0 for the {product}."'))

    status = run_job(hooked, manifest)

    stats, received = sim.stats(), server_stats(webhook_server)
    assert status.status == "succeeded" and status.succeeded == 3
    assert stats["dropped_responses"] == 3 and stats["created"] == 3 and stats["duplicate_submissions"] == 0
    assert received["adopted"] == 3 and received["collected"] == 3
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    assert [line["kind"] for line in ledger] == ["completed"] * 3
    assert sum(Decimal(x["cost_usd"]) for x in ledger) == Decimal(stats["billed_usd"]) == Decimal("0.30")
    # Each run's output is the prediction the provider made for that run's run key.
    by_key = {p["run_key"]: p["id"] for p in sim.predictions()}
    results = read_jsonl(s3, bucket, f"out/jobs/{status.id}/results.jsonl")
    assert all(by_key[r["run_key"]] == r["prediction_id"] for r in results)
