"""The WaveSpeed simulator behaves like the real API, over real HTTP on loopback.

Each test gets its own simulator (0.2 s latency) and talks to it with httpx, or with the
provider's own SDK for the conformance checks. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
import wavespeed
from PIL import Image

from pipeline.provider import WaveSpeedClient
from pipeline.simulator import SimConfig, Simulator

KEY = "sim-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "openai/gpt-image-2/edit"


@pytest.fixture
def api() -> Iterator[Simulator]:
    with Simulator(SimConfig(latency_s=0.2, api_key=KEY, seed=1)) as sim:
        yield sim


@pytest.fixture
def http(api: Simulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api.base_url, headers=AUTH, timeout=10) as client:
        yield client


def png_bytes(size: tuple[int, int] = (32, 24)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def image_url(http: httpx.Client) -> str:
    """An input image the simulator can fetch: uploaded to the simulator itself."""
    r = http.post("/api/v3/media/upload/binary", files={"file": ("in.png", png_bytes(), "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["data"]["download_url"]


def submit(http: httpx.Client, image_url: str, prompt: str = "make it blue", *, run_key: str | None = None,
           query: str = "", **fields: Any) -> httpx.Response:
    headers = {"X-Editpipe-Run-Key": run_key} if run_key else {}
    body = {"images": [image_url], "prompt": prompt, **fields}
    return http.post(f"/api/v3/{MODEL}{query}", json=body, headers=headers)


def wait_terminal(http: httpx.Client, pred_id: str, timeout_s: float = 5.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = http.get(f"/api/v3/predictions/{pred_id}/result").json()["data"]
        if data["status"] not in ("created", "processing"):
            return data
        time.sleep(0.05)
    raise AssertionError(f"prediction {pred_id} still running after {timeout_s}s")


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/nothing.png"


def test_completed_prediction_has_the_requested_image_and_is_billed_once(api, http, image_url):
    r = submit(http, image_url, aspect_ratio="16:9", output_format="jpeg")
    assert r.status_code == 200
    envelope = r.json()
    assert envelope["code"] == 200 and envelope["message"] == "success"
    created = envelope["data"]
    assert created["status"] == "created" and created["outputs"] == [] and created["model"] == MODEL
    assert created["urls"]["get"] == f"{api.base_url}/api/v3/predictions/{created['id']}/result"
    assert created["created_at"].endswith("Z")

    done = wait_terminal(http, created["id"])
    assert done["status"] == "completed" and done["error"] == ""
    assert done["has_nsfw_contents"] == [False] and done["timings"]["inference"] >= 150
    out = httpx.get(done["outputs"][0])
    assert out.headers["content-type"] == "image/jpeg"
    img = Image.open(io.BytesIO(out.content))
    assert img.format == "JPEG" and img.size == (256, 144)

    wait_terminal(http, created["id"])  # polling again must not bill again
    stats = api.stats()
    assert stats["completed"] == 1 and stats["billed_count"] == 1 and stats["billed_usd"] == "0.10"
    assert stats["processing"] == 0 and stats["polls"] >= 2
    [listed] = api.predictions()
    assert listed["billed"] is True and listed["cost_usd"] == "0.10" and listed["status"] == "completed"


def test_fail_marker_fails_the_prediction_without_billing(api, http, image_url):
    pred_id = submit(http, image_url, "edit [sim:fail]").json()["data"]["id"]
    done = wait_terminal(http, pred_id)
    assert done["status"] == "failed" and done["error"] == "simulated failure" and done["outputs"] == []
    stats = api.stats()
    assert stats["failed"] == 1 and stats["billed_count"] == 0 and stats["billed_usd"] == "0.00"


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"images": []}, "images"),
        ({"images": ["x"] * 17}, "images"),
        ({"prompt": "  "}, "prompt"),
        ({"aspect_ratio": "7:5"}, "aspect_ratio must be one of"),
        ({"quality": "ultra"}, "quality must be one of"),
        ({"prompt": "edit [sim:400]"}, "simulated bad request"),
    ],
)
def test_invalid_submit_is_rejected_with_400_and_creates_nothing(api, http, image_url, fields, message):
    body = {"images": [image_url], "prompt": "edit", **fields}
    r = http.post(f"/api/v3/{MODEL}", json=body)
    assert r.status_code == 400 and message in r.json()["message"]
    stats = api.stats()
    assert stats["count_400"] == 1 and stats["created"] == 0


def test_missing_or_wrong_key_is_401_and_never_echoed(api, image_url):
    body = {"images": [image_url], "prompt": "edit"}
    wrong = "wrong-key-do-not-echo"
    no_key = httpx.post(f"{api.base_url}/api/v3/{MODEL}", json=body)
    bad_key = httpx.post(f"{api.base_url}/api/v3/{MODEL}", json=body, headers={"Authorization": f"Bearer {wrong}"})
    poll = httpx.get(f"{api.base_url}/api/v3/predictions/x/result", headers={"Authorization": f"Bearer {wrong}"})
    assert [no_key.status_code, bad_key.status_code, poll.status_code] == [401, 401, 401]
    assert wrong not in bad_key.text and KEY not in bad_key.text
    stats = api.stats()
    assert stats["count_401"] == 3 and stats["submits"] == 2 and stats["created"] == 0


def test_any_key_is_accepted_when_none_is_configured(image_url, api):
    api.configure(api_key=None)
    r = httpx.post(f"{api.base_url}/api/v3/{MODEL}", json={"images": [image_url], "prompt": "x"},
                   headers={"Authorization": "Bearer anything"})
    assert r.status_code == 200


def test_concurrency_limit_answers_429_with_retry_after(api, http, image_url):
    api.configure(max_concurrent=2, latency_s=0.5)
    first = [submit(http, image_url).json()["data"]["id"] for _ in range(2)]
    over = submit(http, image_url)
    assert over.status_code == 429 and over.headers["Retry-After"] == "1"
    for pred_id in first:
        wait_terminal(http, pred_id)
    assert submit(http, image_url).status_code == 200
    stats = api.stats()
    assert stats["count_429"] == 1 and stats["created"] == 3 and stats["peak_concurrency"] == 2
    assert stats["billed_count"] == 2  # the 429 billed nothing


def test_images_per_minute_limit_answers_429_until_a_slot_frees(api, http, image_url):
    api.configure(images_per_minute=3)
    assert all(submit(http, image_url).status_code == 200 for _ in range(3))
    over = submit(http, image_url)
    assert over.status_code == 429
    assert 55 <= int(over.headers["Retry-After"]) <= 60
    stats = api.stats()
    assert stats["count_429"] == 1 and stats["created"] == 3 and stats["max_starts_60s"] == 3


def test_tier_sets_both_limits(api, http, image_url):
    api.configure(tier="bronze", latency_s=1.0)
    codes = [submit(http, image_url).status_code for _ in range(3)]
    assert codes == [200, 200, 429]  # bronze: 2 a minute and 2 at once
    assert api.stats()["peak_concurrency"] == 2


def test_dropped_response_still_creates_and_bills_the_prediction(api, http, image_url):
    with pytest.raises(httpx.TransportError):
        submit(http, image_url, "edit [sim:drop-once]", run_key="run-1")
    stats = api.stats()
    assert stats["created"] == 1 and stats["dropped_responses"] == 1
    [lost] = api.predictions()
    assert lost["dropped"] is True and lost["run_key"] == "run-1"

    retry = submit(http, image_url, "edit [sim:drop-once]", run_key="run-1")
    assert retry.status_code == 200  # only the first submit of a run key is dropped
    wait_terminal(http, retry.json()["data"]["id"])
    wait_terminal(http, lost["id"])
    stats = api.stats()
    assert stats["duplicate_submissions"] == 1 and stats["billed_count"] == 2


def test_server_error_once_creates_nothing(api, http, image_url):
    first = submit(http, image_url, "edit [sim:500-once]", run_key="run-5")
    second = submit(http, image_url, "edit [sim:500-once]", run_key="run-5")
    assert (first.status_code, second.status_code) == (500, 200)
    stats = api.stats()
    assert stats["injected_5xx"] == 1 and stats["created"] == 1 and stats["duplicate_submissions"] == 0


def test_duplicates_are_counted_by_run_key_or_body(api, http, image_url):
    submit(http, image_url, run_key="a")
    submit(http, image_url, run_key="a")
    submit(http, image_url, run_key="b")
    submit(http, image_url, "same body")
    submit(http, image_url, "same body")
    assert api.stats()["duplicate_submissions"] == 2


def test_random_faults_follow_their_rates(api, http, image_url):
    api.configure(error_5xx_rate=1.0)
    assert submit(http, image_url).status_code in (500, 502, 503)
    api.configure(error_5xx_rate=0.0, fail_rate=1.0)
    assert wait_terminal(http, submit(http, image_url).json()["data"]["id"])["status"] == "failed"
    api.configure(fail_rate=0.0, drop_rate=1.0)
    with pytest.raises(httpx.TransportError):
        submit(http, image_url)
    api.configure(drop_rate=0.0, slow_rate=1.0, slow_s=0.3)
    started = time.monotonic()
    assert submit(http, image_url).status_code == 200
    assert time.monotonic() - started >= 0.3
    stats = api.stats()
    assert stats["injected_5xx"] == 1 and stats["failed"] == 1 and stats["dropped_responses"] == 1


def test_slow_marker_triples_the_latency(api, http, image_url):
    pred_id = submit(http, image_url, "edit [sim:slow]").json()["data"]["id"]
    time.sleep(0.35)
    assert http.get(f"/api/v3/predictions/{pred_id}/result").json()["data"]["status"] == "processing"
    assert wait_terminal(http, pred_id)["status"] == "completed"


def test_unreachable_or_broken_input_fails_the_prediction_unbilled(api, http, image_url):
    unreachable = submit(http, image_url, images=[image_url, closed_port_url()]).json()["data"]["id"]
    not_image = http.post("/api/v3/media/upload/binary", files={"file": ("x.png", b"not a png", "image/png")})
    broken = submit(http, image_url, images=[not_image.json()["data"]["download_url"]]).json()["data"]["id"]
    first, second = wait_terminal(http, unreachable), wait_terminal(http, broken)
    assert first["status"] == "failed" and first["error"].startswith("could not fetch input image 2: ")
    assert second["status"] == "failed" and second["error"].startswith("could not fetch input image 1: not a decodable")
    assert api.stats()["billed_count"] == 0


def test_unknown_prediction_is_404(http):
    assert http.get("/api/v3/predictions/does-not-exist/result").status_code == 404


def test_both_upload_ways_give_urls_a_prediction_can_use(api, http):
    data = png_bytes()
    ticket = http.post("/api/v3/media/uploads", json={"filename": "a.png", "size": len(data), "content_type": "image/png"})
    t = ticket.json()["data"]
    assert t["upload"]["method"] == "PUT"
    assert httpx.put(t["upload"]["url"], content=data, headers=t["upload"]["headers"]).status_code == 200
    binary = http.post("/api/v3/media/upload/binary", files={"file": ("b.png", data, "image/png")}).json()["data"]
    for url in (t["download_url"], binary["download_url"]):
        fetched = httpx.get(url)
        assert fetched.content == data and fetched.headers["content-type"] == "image/png"
    pred_id = submit(http, t["download_url"], images=[t["download_url"], binary["download_url"]]).json()["data"]["id"]
    assert wait_terminal(http, pred_id)["status"] == "completed"
    assert api.stats()["uploads"] == 2

    too_big = http.post("/api/v3/media/uploads", json={"filename": "big.png", "size": 21 * 1024 * 1024})
    assert too_big.status_code == 400


def test_sync_mode_returns_the_finished_prediction(http, image_url):
    r = submit(http, image_url, enable_sync_mode=True, aspect_ratio="2:3")
    data = r.json()["data"]
    assert data["status"] == "completed"
    assert Image.open(io.BytesIO(httpx.get(data["outputs"][0]).content)).size == (171, 256)


def test_sync_mode_timeout_answers_processing_with_code_5004(api, http, image_url):
    api.configure(sync_timeout_s=0.05)
    data = submit(http, image_url, enable_sync_mode=True).json()["data"]
    assert data["status"] == "processing" and data["error"] == "Sync mode timed out" and data["code"] == 5004
    assert wait_terminal(http, data["id"])["status"] == "completed"


def test_base64_output_is_the_naked_image_bytes(http, image_url):
    data = submit(http, image_url, enable_base64_output=True, enable_sync_mode=True, output_format="webp").json()["data"]
    img = Image.open(io.BytesIO(base64.b64decode(data["outputs"][0], validate=True)))
    assert img.format == "WEBP" and img.size == (256, 256)
    refused = submit(http, image_url, query="?webhook=http://127.0.0.1:9/x", enable_base64_output=True)
    assert refused.status_code == 400 and "base64" in refused.json()["message"]


def test_webhook_receives_the_finished_prediction(api, http, image_url):
    received: list[dict[str, Any]] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hook = f"http://127.0.0.1:{server.server_port}/hook"
        pred_id = submit(http, image_url, query=f"?webhook={hook}").json()["data"]["id"]
        wait_terminal(http, pred_id)
        deadline = time.monotonic() + 3
        while not received and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        server.shutdown()
        server.server_close()
    assert received and received[0]["id"] == pred_id and received[0]["status"] == "completed"
    assert api.stats()["webhooks_sent"] == 1


def test_five_thousand_predictions_in_flight_at_once(api):
    api.configure(latency_s=3.0, fetch_inputs=False)
    body = {"images": ["http://example.invalid/a.png"], "prompt": "x"}

    # aiohttp on the client side: httpx's async pool is too slow to make thousands of calls quickly.
    async def burst() -> set[int]:
        async with aiohttp.ClientSession(base_url=api.base_url, headers=AUTH) as session:
            async def one(i: int) -> int:
                async with session.post(f"/api/v3/{MODEL}", json=body, headers={"X-Editpipe-Run-Key": str(i)}) as r:
                    return r.status
            return set(await asyncio.gather(*(one(i) for i in range(5000))))

    assert asyncio.run(burst()) == {200}
    stats = api.stats()
    assert stats["created"] == 5000 and stats["max_starts_60s"] == 5000 and stats["peak_concurrency"] >= 2500
    deadline = time.monotonic() + 15
    while api.stats()["processing"] and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = api.stats()
    assert stats["completed"] == 5000 and stats["billed_usd"] == "500.00" and stats["duplicate_submissions"] == 0


def test_control_endpoints_change_config_and_reset(api, http, image_url):
    changed = httpx.post(f"{api.base_url}/_sim/config", json={"latency_s": 0.05, "price_usd": "0.25"})
    assert changed.status_code == 200 and changed.json()["price_usd"] == "0.25"
    assert changed.json()["api_key"] == "***"
    assert httpx.post(f"{api.base_url}/_sim/config", json={"nope": 1}).status_code == 400
    wait_terminal(http, submit(http, image_url).json()["data"]["id"])
    assert httpx.get(f"{api.base_url}/_sim/stats").json()["billed_usd"] == "0.25"
    assert httpx.post(f"{api.base_url}/_sim/reset").status_code == 200
    assert httpx.get(f"{api.base_url}/_sim/predictions").json() == []
    assert api.stats()["created"] == 0


def _created(http: httpx.Client, image_url: str, prompts: list[str]) -> list[dict[str, Any]]:
    """Submit one prediction per prompt, a few milliseconds apart, and wait for every one."""
    ids = []
    for prompt in prompts:
        ids.append(submit(http, image_url, prompt).json()["data"]["id"])
        time.sleep(0.005)  # distinct created_at milliseconds, so a window can split them
    return [wait_terminal(http, pred_id) for pred_id in ids]


def list_recent(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/v3/predictions", json={"page": 1, "page_size": 100, **body})


def search_billings(http: httpx.Client, **body: Any) -> httpx.Response:
    return http.post("/api/v3/billings/search", json={"billing_type": "deduct", "page": 1, "page_size": 100, **body})


def test_recent_predictions_lists_every_prediction_newest_first_in_pages(api, http, image_url):
    done = _created(http, image_url, ["a", "b [sim:fail]", "c", "d", "e"])
    newest_first = [p["id"] for p in reversed(done)]
    seen = []
    for page in (1, 2, 3):
        data = http.post("/api/v3/predictions", json={"page": page, "page_size": 2}).json()["data"]
        assert data["page"] == page and data["total"] == 5
        seen += [item["id"] for item in data["items"]]
    assert seen == newest_first
    [item] = [i for i in list_recent(http).json()["data"]["items"] if i["id"] == done[0]["id"]]
    assert item == done[0]  # the same object as a result answer
    assert http.post("/api/v3/predictions", json={"page": 4, "page_size": 2}).json()["data"]["items"] == []
    assert api.stats()["prediction_listings"] == 5


def test_recent_predictions_filter_by_model_status_and_creation_window(api, http, image_url):
    done = _created(http, image_url, ["a", "b [sim:fail]", "c", "d"])
    ids = [p["id"] for p in done]

    def found(**body: Any) -> list[str]:
        return [item["id"] for item in list_recent(http, **body).json()["data"]["items"]]

    assert found(model=MODEL) == ids[::-1]
    assert found(model="someone/else/edit") == []
    assert found(status="completed") == [ids[3], ids[2], ids[0]]
    assert found(status="failed") == [ids[1]]
    # Both bounds inclusive, to the millisecond created_at is written with.
    assert found(created_after=done[1]["created_at"], created_before=done[2]["created_at"]) == [ids[2], ids[1]]
    assert found(created_after=done[3]["created_at"]) == [ids[3]]
    assert found(created_before=done[0]["created_at"], model=MODEL) == [ids[0]]
    assert found(created_after="2026-01-01T00:00:00+00:00", status="failed") == [ids[1]]


@pytest.mark.parametrize("body, message", [
    ({"page": 1}, "page_size is required"),
    ({"page_size": 10}, "page is required"),
    ({"page": 1, "page_size": 0}, "page_size must be"),
    ({"page": 1, "page_size": 101}, "page_size must be"),
    ({"page": 0, "page_size": 10}, "page must be"),
    ({"page": 1, "page_size": 10, "created_after": "yesterday"}, "created_after must be an ISO 8601 time"),
])
def test_recent_predictions_reject_bad_pages_and_filters(http, body, message):
    r = http.post("/api/v3/predictions", json=body)
    assert r.status_code == 400 and message in r.json()["message"]
    assert http.post("/api/v3/predictions", json={"page": 1, "page_size": 100}).status_code == 200


@pytest.mark.parametrize("body, message", [
    ({"page_size": 0}, "page_size must be"),
    ({"page_size": 101}, "page_size must be"),
    ({"sort": "price ASC"}, "sort must be one of"),
    ({"start_time": "soon"}, "start_time must be milliseconds"),
    ({"prediction_uuids": "abc"}, "prediction_uuids must be a list"),
])
def test_billing_search_rejects_bad_pages_and_filters(http, body, message):
    r = http.post("/api/v3/billings/search", json=body)
    assert r.status_code == 400 and message in r.json()["message"]


def test_account_endpoints_need_the_key(api):
    for path in ("/api/v3/predictions", "/api/v3/billings/search"):
        assert httpx.post(api.base_url + path, json={"page": 1, "page_size": 10}).status_code == 401
        wrong = httpx.post(api.base_url + path, json={"page": 1, "page_size": 10},
                           headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "nope" not in wrong.text
    assert api.stats()["count_401"] == 4


def test_a_deduction_is_written_exactly_when_a_prediction_completes(api, http, image_url):
    api.configure(price_usd="0.1")
    done = _created(http, image_url, ["a", "b [sim:fail]", "c"])
    with pytest.raises(httpx.TransportError):
        submit(http, image_url, "d [sim:drop-once]", run_key="lost")
    [lost] = [p for p in api.predictions() if p["dropped"]]
    wait_terminal(http, lost["id"])
    data = search_billings(http, sort="created_at ASC").json()["data"]
    assert data["total"] == 3 == api.stats()["billed_count"]
    assert [item["prediction"]["uuid"] for item in data["items"]] == [done[0]["id"], done[2]["id"], lost["id"]]
    item = data["items"][0]
    assert item["billing_type"] == "deduct" and item["price"] == 0.1 and isinstance(item["price"], float)
    assert item["prediction"] == {"uuid": done[0]["id"], "model_uuid": MODEL, "status": "completed"}
    assert item["created_at"].endswith("Z") and item["access_key_name"] and isinstance(item["order"], dict)
    billed = sum(Decimal(str(i["price"])) for i in data["items"])
    assert billed == Decimal(api.stats()["billed_usd"])
    assert api.stats()["billing_searches"] == 1


def test_billing_search_filters_by_prediction_ids_and_time_and_sorts(api, http, image_url):
    done = _created(http, image_url, ["a", "b", "c"])
    ids = [p["id"] for p in done]
    asc = search_billings(http, sort="created_at ASC").json()["data"]["items"]
    desc = search_billings(http, sort="created_at DESC").json()["data"]["items"]
    assert [i["uuid"] for i in desc] == [i["uuid"] for i in reversed(asc)]
    chosen = search_billings(http, prediction_uuids=[ids[0], ids[2], "unknown"]).json()["data"]
    assert chosen["total"] == 2 and {i["prediction"]["uuid"] for i in chosen["items"]} == {ids[0], ids[2]}

    def ms(stamp: str) -> int:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)

    first, last = ms(asc[0]["created_at"]), ms(asc[-1]["created_at"])
    assert search_billings(http, start_time=str(first), end_time=str(last)).json()["data"]["total"] == 3
    assert search_billings(http, start_time=last + 1).json()["data"]["total"] == 0
    assert search_billings(http, end_time=first).json()["data"]["total"] >= 1
    paged = [search_billings(http, sort="created_at ASC", page=p, page_size=1).json()["data"] for p in (1, 2, 3)]
    assert [d["items"][0]["uuid"] for d in paged] == [i["uuid"] for i in asc] and paged[0]["total"] == 3
    assert search_billings(http, billing_type="recharge").json()["data"]["total"] == 0


def test_the_provider_client_reads_both_listings_page_by_page(api, image_url, http):
    done = _created(http, image_url, ["a", "b [sim:fail]", "c", "d", "e"])
    completed = [p["id"] for p in done if p["status"] == "completed"]
    window = {"model": MODEL, "created_after": done[0]["created_at"], "created_before": done[-1]["created_at"]}
    with WaveSpeedClient(api.base_url, KEY) as client:
        page = client.recent_predictions(page_size=2, **window)
        assert page.total == 5 and len(page.items) == 2 and not page.last
        assert page.items[0].id == done[-1]["id"] and page.items[0].created_at == done[-1]["created_at"]
        listed = list(client.iter_recent_predictions(page_size=2, **window))
        assert [p.id for p in listed] == [p["id"] for p in reversed(done)]
        assert [p.id for p in client.iter_recent_predictions(status="failed", **window)] == [done[1]["id"]]

        first = client.billings(prediction_ids=completed, page_size=3)
        assert first.total == 4 and len(first.items) == 3 and not first.last
        records = list(client.iter_billings(prediction_ids=completed, page_size=3))
        assert [r.prediction_id for r in records] == completed  # oldest first by default
        assert all(r.price_usd == Decimal("0.1") and r.billing_type == "deduct" for r in records)
        assert sum(r.price_usd for r in records) == Decimal(api.stats()["billed_usd"])
        start = int(datetime.fromisoformat(records[1].created_at).timestamp() * 1000)
        later = list(client.iter_billings(start_ms=start, end_ms=start + 60_000, sort="created_at DESC"))
        assert [r.prediction_id for r in later] == completed[:0:-1]


class TestSdkConformance:
    """The provider's SDK, pointed at the simulator, works unchanged."""

    @pytest.fixture
    def client(self, api: Simulator) -> wavespeed.Client:
        return wavespeed.Client(api_key=KEY, base_url=api.base_url, max_connection_retries=0)

    @pytest.fixture
    def uploaded(self, client: wavespeed.Client, tmp_path: Path) -> str:
        path = tmp_path / "input.png"
        path.write_bytes(png_bytes())
        return client.upload(str(path))

    def test_upload_then_run_and_get_result(self, client, uploaded, api):
        assert httpx.get(uploaded).content == png_bytes()
        result = client.run(MODEL, {"images": [uploaded], "prompt": "edit", "aspect_ratio": "3:2"}, poll_interval=0.05)
        assert Image.open(io.BytesIO(httpx.get(result["outputs"][0]).content)).size == (256, 171)
        [pred] = api.predictions()
        fetched = client.get_result(pred["id"])
        assert fetched["data"]["status"] == "completed" and fetched["data"]["outputs"] == result["outputs"]

    def test_sync_mode(self, client, uploaded):
        result = client.run(MODEL, {"images": [uploaded], "prompt": "edit"}, enable_sync_mode=True)
        assert len(result["outputs"]) == 1

    def test_sync_timeout_is_reported_as_processing(self, client, uploaded, api):
        api.configure(sync_timeout_s=0.05)
        outcome = client.run_no_throw(MODEL, {"images": [uploaded], "prompt": "edit"}, enable_sync_mode=True)
        assert outcome["status"] == "processing" and outcome["task_id"] == api.predictions()[0]["id"]

    def test_failed_prediction_raises(self, client, uploaded):
        with pytest.raises(RuntimeError, match="simulated failure"):
            client.run(MODEL, {"images": [uploaded], "prompt": "x [sim:fail]"}, poll_interval=0.05)


# --- Simulated outputs show their input (issue 16, item 6) ---

from pipeline.simulator.images import MAX_INPUT_PIXELS, backdrop  # noqa: E402

RED, GREEN = (200, 30, 30), (20, 180, 40)


def upload(http: httpx.Client, data: bytes, name: str = "in.png") -> str:
    r = http.post("/api/v3/media/upload/binary", files={"file": (name, data, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()["data"]["download_url"]


def solid_png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def output_image(http: httpx.Client, pred_id: str) -> tuple[Image.Image, bytes]:
    done = wait_terminal(http, pred_id)
    assert done["status"] == "completed", done
    out = done["outputs"][0]
    data = httpx.get(out).content if out.startswith("http") else base64.b64decode(out, validate=True)
    return Image.open(io.BytesIO(data)), data


def near(pixel: Any, colour: tuple[int, int, int], tolerance: int = 0) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel[:3], colour, strict=True))


def test_output_shows_the_first_input_on_a_backdrop_coloured_by_the_prompt(http):
    red, green = upload(http, solid_png(RED)), upload(http, solid_png(GREEN))
    prompts = ("put it on a marble table", "put it on a beach")
    ids = [submit(http, red, prompt, images=[red, green], aspect_ratio="16:9").json()["data"]["id"] for prompt in prompts]
    again = submit(http, red, prompts[0], aspect_ratio="16:9").json()["data"]["id"]
    corners = []
    for pred_id, prompt in zip([*ids, again], [*prompts, prompts[0]], strict=True):
        img, _ = output_image(http, pred_id)
        assert img.format == "PNG" and img.size == (256, 144)
        rgb = img.convert("RGB")
        assert rgb.getpixel((128, 72)) == RED  # the first input, not the second, at the centre
        assert rgb.getpixel((0, 0)) == rgb.getpixel((255, 143)) == backdrop(prompt)
        # Scaled up to fit 80% of the height (the 40x30 input is drawn 153x115), backdrop around it.
        assert rgb.getpixel((128, 20)) == rgb.getpixel((60, 72)) == RED
        assert rgb.getpixel((128, 8)) == rgb.getpixel((45, 72)) == backdrop(prompt)
        corners.append(rgb.getpixel((0, 0)))
    assert corners[0] != corners[1] and corners[0] == corners[2]
    assert backdrop(prompts[0]) == backdrop(prompts[0]) != backdrop(prompts[1])


@pytest.mark.parametrize(("fields", "fmt", "size", "tolerance"), [
    ({"output_format": "jpeg", "aspect_ratio": "3:4"}, "JPEG", (192, 256), 12),
    ({"output_format": "webp", "aspect_ratio": "1:1"}, "WEBP", (256, 256), 12),
    ({"output_format": "webp", "aspect_ratio": "21:9", "enable_base64_output": True}, "WEBP", (256, 110), 12),
    ({"output_format": "png", "aspect_ratio": "9:16", "enable_base64_output": True}, "PNG", (144, 256), 0),
])
def test_derived_output_has_the_requested_size_and_format(http, fields, fmt, size, tolerance):
    url = upload(http, solid_png(GREEN, (300, 500)))
    img, data = output_image(http, submit(http, url, "studio shot", **fields).json()["data"]["id"])
    assert img.format == fmt and img.size == size
    rgb = img.convert("RGB")
    assert near(rgb.getpixel((size[0] // 2, size[1] // 2)), GREEN, tolerance)
    assert near(rgb.getpixel((1, 1)), backdrop("studio shot"), tolerance)


def test_longer_side_follows_the_configured_image_long_side(api, http):
    api.configure(image_long_side=600)
    url = upload(http, solid_png(RED))
    img, _ = output_image(http, submit(http, url, aspect_ratio="4:3").json()["data"]["id"])
    assert img.size == (600, 450) and img.convert("RGB").getpixel((300, 225)) == RED


def test_an_input_too_large_to_draw_fails_the_prediction_unbilled(api, http):
    # A decompression bomb in miniature: 70 million pixels in a few kB (more than the simulator draws).
    buf = io.BytesIO()
    Image.new("1", (10_000, 7_000), 1).save(buf, format="PNG")
    assert 10_000 * 7_000 > MAX_INPUT_PIXELS and len(buf.getvalue()) < 100_000
    done = wait_terminal(http, submit(http, upload(http, buf.getvalue())).json()["data"]["id"])
    assert done["status"] == "failed" and done["code"] == 1402
    assert done["error"].startswith("could not decode input image 1: 10000x7000 pixels is more than")
    assert api.stats()["billed_count"] == 0


def test_without_fetched_inputs_every_output_is_the_one_cached_picture(api, http):
    api.configure(fetch_inputs=False)
    url = "http://example.invalid/never-fetched.png"
    first, second = (submit(http, url, prompt).json()["data"]["id"] for prompt in ("one", "two"))
    (img, a), (_, b) = output_image(http, first), output_image(http, second)
    assert a == b and img.size == (256, 256) and img.format == "PNG"
