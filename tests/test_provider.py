"""The WaveSpeed client against the simulator over HTTP: every error lands in the class a
caller acts on, and the key never appears in an exception."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import API_KEY
from pipeline.errors import AuthFailed, RateLimited, RunRejected, SubmitUnconfirmed
from pipeline.provider import WaveSpeedClient

ENDPOINT = "/api/v3/openai/gpt-image-2/edit"


@pytest.fixture
def client(sim):
    with WaveSpeedClient(sim.base_url, API_KEY, timeout_s=10) as c:
        yield c


@pytest.fixture
def image_url(sim, client, tmp_path: Path) -> str:
    path = tmp_path / "ref.png"
    Image.new("RGB", (32, 32), (10, 120, 200)).save(path)
    return client.upload(path)


def wait_done(client: WaveSpeedClient, prediction_id: str, timeout_s: float = 10):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        p = client.result(prediction_id)
        if p.terminal:
            return p
        time.sleep(0.1)
    raise AssertionError("prediction did not finish")


def test_submit_poll_download_round_trip(client, image_url, sim):
    p = client.submit(ENDPOINT, {"images": [image_url], "prompt": "a ring", "aspect_ratio": "3:2"}, run_key="k1")
    done = wait_done(client, p.id)
    assert done.completed
    data = client.download(done.outputs[0])
    assert data.startswith(b"\x89PNG")
    assert sim.stats()["billed_count"] == 1


def test_base64_outputs_are_decoded(client, image_url):
    p = client.submit(ENDPOINT, {"images": [image_url], "prompt": "a ring", "enable_base64_output": True})
    done = wait_done(client, p.id)
    assert client.download(done.outputs[0]).startswith(b"\x89PNG")


def test_bad_request_is_permanent_for_the_run(client, image_url):
    with pytest.raises(RunRejected) as info:
        client.submit(ENDPOINT, {"images": [image_url], "prompt": "[sim:400] a ring"})
    assert "400" in str(info.value) and "simulated bad request" in str(info.value)


def test_rejected_key_is_fatal_and_never_shown(sim):
    wrong = "sk-wrong-9c1e55aa"
    with WaveSpeedClient(sim.base_url, wrong) as c, pytest.raises(AuthFailed) as info:
        c.submit(ENDPOINT, {"images": ["http://x/y.png"], "prompt": "a ring"})
    assert "401" in str(info.value) and wrong not in str(info.value) and wrong not in repr(info.value)


def test_429_carries_retry_after(sim, client, image_url):
    sim.configure(max_concurrent=1, latency_s=5)
    client.submit(ENDPOINT, {"images": [image_url], "prompt": "first"})
    with pytest.raises(RateLimited) as info:
        client.submit(ENDPOINT, {"images": [image_url], "prompt": "second"})
    assert info.value.retry_after is not None and info.value.retry_after >= 1


def test_a_lost_submit_answer_is_reported_as_unconfirmed(sim, client, image_url):
    with pytest.raises(SubmitUnconfirmed):
        client.submit(ENDPOINT, {"images": [image_url], "prompt": "[sim:drop-once] a ring"}, run_key="drop-1")
    stats = sim.stats()
    assert stats["created"] == 1 and stats["dropped_responses"] == 1


def test_unknown_prediction_is_rejected(client):
    with pytest.raises(RunRejected):
        client.result("does-not-exist")
