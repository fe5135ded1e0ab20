"""The review page, proven in a real browser (Debian's Chromium driven by Playwright), and
regenerate, proven by what the simulator billed.

A finished job (real workers, moto's S3, the simulator) is opened on its review page: three
runs approved with the keyboard, one rejected with a reason; ``review.jsonl`` then holds
exactly those decisions. A second reviewer's decision, taken through another server over the
same storage, shows on the open page without a reload. Bad requests (unknown run, a run
without output, another origin, no CSRF token, a wrong Host) get a 4xx and write nothing.
A rejected run regenerated (from the page, then with ``editpipe regenerate --rejected``) is
billed once more, has its ledger line, and joins the review.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from chromium import ARTIFACTS, ChromiumUnavailable, find_or_install
from conftest import ROOT, make_image, run_job, write_manifest
from pipeline.cli.main import main as cli
from pipeline.layout import job_file
from pipeline.review_server import ReviewApp, ReviewServer
from pipeline.state import State
from pipeline.storage import Storage, open_storage
from pipeline.submission import follow
from workers.celery_app import runs_enqueuer

pytestmark = pytest.mark.timeout(300)

PROMPTS = """
  - id: editorial
    text: A model wearing the {product}, warm natural light.
  - id: broken
    text: "A flat-lay of the {product} [sim:fail]"
"""
SETS = """
  - id: set-a
    images: [products/a.png]
    vars: {product: gold earrings}
  - id: set-b
    images: [products/b.png]
    vars: {product: silver hoops}"""


@pytest.fixture(scope="module")
def chromium_path() -> str:
    try:
        return find_or_install()
    except ChromiumUnavailable as exc:
        pytest.skip(f"headless Chromium is needed to look at the review page: {exc}")


@pytest.fixture
def playwright_browser(chromium_path):
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed")
    with sync_api.sync_playwright() as p:
        # Debian's Chromium, not a browser build Playwright would download.
        browser = p.chromium.launch(executable_path=chromium_path, headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


def finished_job(tmp_path: Path, settings, workers, output: str, sets: str = SETS, extra: str = "",
                 ) -> tuple[str, Storage]:
    """2 sets × (a prompt that works, one the simulator fails) × 2 ratios: 4 outputs, 4 failed."""
    workers.start(1)
    status = run_job(settings, write_manifest(tmp_path, output, sets=sets, prompts=PROMPTS, extra=extra))
    assert (status.succeeded, status.failed) == (4, 4), status
    return status.id, open_storage(status.output, settings)


def serve(storage: Storage, job_id: str, settings, state: State, reviewer: str) -> ReviewServer:
    return ReviewServer(ReviewApp(storage, job_id, reviewer=reviewer, state=state,
                                  enqueue_runs=runs_enqueuer(settings))).start()


def csrf_of(url: str) -> str:
    page = httpx.get(url).text
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


def post(server: ReviewServer, path: str, body: dict, *, token: str | None = None, origin: str | None = None,
         **headers: str) -> httpx.Response:
    origin = server.url.rstrip("/") if origin is None else origin
    sent = {"Content-Type": "application/json", "X-CSRF-Token": token if token is not None else csrf_of(server.url),
            **({"Origin": origin} if origin else {}), **headers}
    return httpx.post(server.url + path, content=json.dumps(body), headers=sent, timeout=30)


def review_lines(storage: Storage, job_id: str) -> list[dict]:
    try:
        text = storage.get_text(job_file(job_id, "review.jsonl"))
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def results(storage: Storage, job_id: str) -> list[dict]:
    return [json.loads(line) for line in storage.get_text(job_file(job_id, "results.jsonl")).splitlines()]


def live_objects(s3, bucket: str) -> dict[str, tuple[str, object]]:
    """What the publish destination holds: key -> (ETag, LastModified)."""
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="live/").get("Contents", [])
    return {obj["Key"]: (obj["ETag"], obj["LastModified"]) for obj in listed}


def test_reviewer_approves_three_and_rejects_one_in_chromium_then_publish_copies_exactly_those_once(
    tmp_path, settings, sim, workers, bucket, s3, state, playwright_browser
):
    # set-b's outputs are flagged by the provider: their not_nsfw check fails.
    sets = SETS.replace("{product: silver hoops}", '{product: "silver hoops [sim:nsfw]"}')
    publish = f"""publish:
  to: s3://{bucket}/live/{{image_set}}/{{prompt}}/{{aspect_ratio}}
  review: required
  checks: [aspect_ratio, not_nsfw, changed]
"""
    job_id, storage = finished_job(tmp_path, settings, workers, f"s3://{bucket}/edits", sets=sets, extra=publish)
    with_output = [r for r in results(storage, job_id) if r["status"] == "succeeded"]
    with serve(storage, job_id, settings, state, "alice@review") as server:
        page = playwright_browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("dialog", lambda dialog: dialog.accept("the earring is cut off at the edge"))
        page.goto(server.url)
        page.wait_for_function("document.body.dataset.runs === '8'")
        cards = page.locator("article.card")
        assert cards.count() == 8
        # Every picture on the page loaded (inputs and outputs, served from S3 through the page).
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.evaluate("document.images.length") == 12  # 8 runs' inputs, 4 outputs

        # The checks, as collect recorded them: the flagged outputs under "Checks failed".
        page.click("#f-checks-failed")
        assert cards.count() == 2
        assert all(cards.nth(i).locator(".check.fail").inner_text() == "\u2717 not_nsfw" for i in range(2))
        # Only the runs with an output can be decided on: the "Waiting" filter shows those.
        page.click("#f-waiting")
        assert cards.count() == 4
        keys = [cards.nth(i).get_attribute("data-run-key") for i in range(4)]
        assert set(keys) == {r["run_key"] for r in with_output}
        # The keyboard: select three (x, j, x, j, x), approve the selection (A).
        page.keyboard.press("x")
        for _ in range(2):
            page.keyboard.press("j")
            page.keyboard.press("x")
        assert page.inner_text("#selcount") == "3"
        page.keyboard.press("A")
        page.wait_for_function("document.body.dataset.decisions === '3'")
        # The fourth with its button; the reason goes in the prompt the page asks.
        page.click("#f-all")
        page.locator(f'article[data-run-key="{keys[3]}"] button.reject').click()
        page.wait_for_function("document.body.dataset.decisions === '4'")

        page.click("#f-approved")
        assert sorted(cards.nth(i).get_attribute("data-run-key") for i in range(cards.count())) == sorted(keys[:3])
        page.click("#f-rejected")
        assert cards.count() == 1 and "the earring is cut off at the edge" in cards.first.inner_text()
        page.click("#f-waiting")
        assert cards.count() == 0
        page.click("#f-all")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-page.png"), full_page=True)

        lines = review_lines(storage, job_id)
        assert sorted((line["run_key"], line["decision"]) for line in lines) == sorted(
            [(key, "approve") for key in keys[:3]] + [(keys[3], "reject")])
        assert {line["reviewer"] for line in lines} == {"alice@review"}
        assert [line["reason"] for line in lines if line["decision"] == "reject"] == [
            "the earring is cut off at the edge"]

        # Publish: exactly the three approved outputs reach the destination (one with a failed
        # check: a person approved it, having seen it), each with its sidecar; again: nothing.
        env = {"REDIS_URL": settings.redis_url, "S3_ENDPOINT_URL": settings.s3_endpoint_url}
        done = CliRunner().invoke(cli, ["publish", job_id], env=env)
        assert done.exit_code == 0, done.output
        by_key = {r["run_key"]: r for r in with_output}
        expected = {f"live/{by_key[k]['image_set']}/editorial/{by_key[k]['options']['aspect_ratio']}.png": k
                    for k in keys[:3]}
        live = live_objects(s3, bucket)
        assert set(live) == set(expected) | {key.replace(".png", ".json") for key in expected}
        for key, run_key in expected.items():
            published = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            assert published == storage.get_bytes(by_key[run_key]["output"])
        again = CliRunner().invoke(cli, ["publish", job_id], env=env)
        assert again.exit_code == 0 and "0 copied" in again.output, again.output
        assert live_objects(s3, bucket) == live

        # Regenerate the rejected run from the page: a new card joins, with its output, as
        # the workers collect it (the page polls).
        billed = sim.stats()["billed_count"]
        page.locator(f'article[data-run-key="{keys[3]}"] button.regenerate').click()
        page.wait_for_function("document.body.dataset.runs === '9'", timeout=30_000)
        page.wait_for_selector("#run-9 a.out img", timeout=60_000)
        page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#run-9").get_attribute("data-state") == "waiting"
        assert f"regenerated for {keys[3][:10]}" in page.inner_text("#run-9")
        assert sim.stats()["billed_count"] == billed + 1


def test_second_reviewers_decision_on_another_server_appears_on_the_open_page_without_reload(
    tmp_path, settings, sim, workers, state, playwright_browser
):
    # A local output root this time: two servers (two machines) over one folder.
    job_id, storage = finished_job(tmp_path, settings, workers, str(tmp_path / "out"))
    key = next(r["run_key"] for r in results(storage, job_id) if r["status"] == "succeeded")
    with serve(storage, job_id, settings, state, "alice@one") as alice, \
            serve(open_storage(str(tmp_path / "out"), settings), job_id, settings, state, "bob@two") as bob:
        page = playwright_browser.new_page()
        page.goto(alice.url)
        page.wait_for_function("document.body.dataset.runs === '8'")
        loads = []
        page.on("load", lambda _: loads.append(1))
        answer = post(bob, "api/decisions", {"run_keys": [key], "decision": "approve"})
        assert answer.status_code == 200, answer.text
        page.wait_for_function("document.body.dataset.decisions === '1'", timeout=10_000)
        card = page.locator(f'article[data-run-key="{key}"]')
        assert card.get_attribute("data-state") == "approved"
        assert "bob@two" in card.inner_text()
        assert loads == []  # picked up by the page's poll, not by a reload


def test_bad_requests_get_a_4xx_and_write_nothing(tmp_path, settings, sim, workers, bucket, state):
    job_id, storage = finished_job(tmp_path, settings, workers, f"s3://{bucket}/edits")
    lines = results(storage, job_id)
    good = next(r["run_key"] for r in lines if r["status"] == "succeeded")
    failed = next(r["run_key"] for r in lines if r["status"] == "failed")
    with serve(storage, job_id, settings, state, "alice@review") as server:
        token = csrf_of(server.url)
        approve = {"run_keys": [good], "decision": "approve"}
        cases = {
            "unknown run": (post(server, "api/decisions", {"run_keys": ["f" * 64], "decision": "approve"}), 404),
            "unknown run among good ones": (
                post(server, "api/decisions", {"run_keys": [good, "e" * 64], "decision": "approve"}), 404),
            "a run without output": (post(server, "api/decisions", {"run_keys": [failed], "decision": "approve"}), 409),
            "regenerate a run without output": (
                post(server, "api/regenerate", {"run_keys": [failed], "reason": "again"}), 409),
            "reject without a reason": (post(server, "api/decisions", {"run_keys": [good], "decision": "reject"}), 400),
            "another origin": (post(server, "api/decisions", approve, token=token, origin="http://evil.example"), 403),
            "no origin, another referer": (
                post(server, "api/decisions", approve, token=token, origin="", Referer="http://evil.example/x"), 403),
            "no CSRF token": (post(server, "api/decisions", approve, token=""), 403),
            "a wrong CSRF token": (post(server, "api/decisions", approve, token=token[::-1]), 403),
            "a wrong Host (DNS rebinding)": (
                post(server, "api/decisions", approve, token=token, Host="attacker.example:80"), 403),
            "not JSON": (httpx.post(server.url + "api/decisions", data={"run_keys": good, "decision": "approve"},
                                    headers={"Origin": server.url.rstrip("/"), "X-CSRF-Token": token}), 400),
        }
        for name, (answer, expected) in cases.items():
            assert answer.status_code == expected, (name, answer.status_code, answer.text)
            assert answer.json()["error"], name
        # A forged form from another site's page, as a browser would send it.
        forged = httpx.post(server.url + "api/decisions", data={"run_keys": good, "decision": "approve"},
                            headers={"Origin": "http://evil.example"})
        assert forged.status_code == 403
        assert httpx.get(server.url + "media/jobs/" + job_id + "/ledger.jsonl").status_code == 404
        assert review_lines(storage, job_id) == []
        # And a good one goes through, with the same token.
        assert post(server, "api/decisions", approve, token=token).status_code == 200
    assert [(line["run_key"], line["decision"]) for line in review_lines(storage, job_id)] == [(good, "approve")]


def test_rejected_run_regenerated_from_the_page_and_the_cli_is_billed_once_more_and_joins_the_review(
    tmp_path, settings, sim, workers, bucket, state
):
    job_id, storage = finished_job(tmp_path, settings, workers, f"s3://{bucket}/edits")
    before = sim.stats()
    good = [r for r in results(storage, job_id) if r["status"] == "succeeded"]
    first, second = good[0]["run_key"], good[1]["run_key"]
    with serve(storage, job_id, settings, state, "alice@review") as server:
        answer = post(server, "api/regenerate", {"run_keys": [first], "reason": "wrong colour"})
        assert answer.status_code == 200, answer.text
        made = answer.json()["regenerated"]
        assert len(made) == 1 and not made[0]["before"]
        new_key, new_output = made[0]["run_key"], made[0]["output"]
        # Two reviewers clicking at once: the second click pays nothing.
        again = post(server, "api/regenerate", {"run_keys": [first], "reason": "wrong colour"})
        assert again.json()["regenerated"][0] == {**made[0], "before": True}
        status = follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=60)
        assert status.done and status.total == 9 and status.succeeded == 5, status
        for _ in range(50):  # the page reads the job again once Redis says it changed
            cards = httpx.get(server.url + "api/state").json()["runs"]
            if len(cards) == 9 and cards[8]["output"]:
                break
            time.sleep(0.2)
        card = cards[8]
        assert (card["run_key"], card["output"], card["regenerated_from"]) == (new_key, new_output, first)
        assert card["variant"] == 2 and card["status"] == "succeeded"
        assert next(c for c in cards if c["run_key"] == first)["regenerated_as"] == new_key
        assert httpx.get(server.url + "media/" + card["thumb"]).status_code == 200

    after = sim.stats()
    assert after["billed_count"] == before["billed_count"] + 1
    billed = [p for p in sim.predictions() if p["run_key"] == new_key and p["billed"]]
    assert len(billed) == 1
    ledger = [json.loads(line) for line in storage.get_text(job_file(job_id, "ledger.jsonl")).splitlines()]
    assert [(line["run_key"], line["prediction_id"]) for line in ledger if line["run_key"] == new_key] == [
        (new_key, billed[0]["id"])]
    assert sum(map(lambda line: float(line["cost_usd"]), ledger)) == pytest.approx(float(after["billed_usd"]) -
                                                                                    float(before["billed_usd"]) +
                                                                                    sum(float(r["cost_usd"]) for r in good))
    assert storage.exists(new_output) and storage.exists(new_output.rsplit(".", 1)[0] + ".json")
    assert [r["run_key"] for r in results(storage, job_id)][8] == new_key
    assert storage.exists(good[0]["output"])  # the rejected output is left as it was

    # From the command line: the other rejected run (the first is regenerated already).
    env = {"REDIS_URL": settings.redis_url, "S3_ENDPOINT_URL": settings.s3_endpoint_url}
    done = CliRunner().invoke(cli, ["review", job_id, "--reject", second, "--reason", "blurry"], env=env)
    assert done.exit_code == 0, done.output
    done = CliRunner().invoke(cli, ["regenerate", job_id, "--rejected", "--wait"], env=env)
    assert done.exit_code == 1, done.output  # exits like `run`: the job's four [sim:fail] runs failed
    assert "1 run(s) regenerating" in done.output and "regenerated before as" in done.output
    assert sim.stats()["billed_count"] == before["billed_count"] + 2
    assert state.jobs.status(job_id).total == 10


def test_regenerated_variant_never_overwrites_a_stored_output(tmp_path, settings, sim, workers, state):
    # A template without {variant}: the new run's key gets -v2, never the rejected one's.
    make_image(tmp_path / "products" / "a.png")
    manifest = write_manifest(tmp_path, str(tmp_path / "out"), sets=SETS, prompts=PROMPTS,
                              extra='output_key: "{image_set}/{prompt}/{aspect_ratio}"\n')
    workers.start(1)
    status = run_job(settings, manifest)
    storage = open_storage(status.output, settings)
    source = next(r for r in results(storage, status.id) if r["status"] == "succeeded")
    storage.put_bytes(source["output"].rsplit(".", 1)[0] + "-v2.png", b"someone else's")
    with serve(storage, status.id, settings, state, "alice@review") as server:
        answer = post(server, "api/regenerate", {"run_keys": [source["run_key"]], "reason": "again"})
    made = answer.json()["regenerated"][0]
    assert made["output"] == source["output"].rsplit(".", 1)[0] + "-v3.png"
    follow(state, status.id, lambda s: None, interval_s=0.2, timeout_s=60)
    assert storage.get_bytes(source["output"].rsplit(".", 1)[0] + "-v2.png") == b"someone else's"
    assert storage.exists(made["output"])


def test_page_without_redis_reviews_from_storage_alone_and_refuses_to_regenerate(
    tmp_path, settings, sim, workers, state
):
    # A job of `editpipe run` (its private Redis gone): results.jsonl and the sidecars suffice.
    job_id, storage = finished_job(tmp_path, settings, workers, str(tmp_path / "out"))
    good = next(r for r in results(storage, job_id) if r["status"] == "succeeded")
    with ReviewServer(ReviewApp(storage, job_id, reviewer="carol@laptop")).start() as server:
        cards = httpx.get(server.url + "api/state").json()["runs"]
        assert len(cards) == 8
        card = next(c for c in cards if c["run_key"] == good["run_key"])
        assert card["prompt_sent"] == "A model wearing the " + ("gold earrings" if good["image_set"] == "set-a"
                                                                else "silver hoops") + ", warm natural light."
        assert httpx.get(server.url + "media/" + card["output"]).content == storage.get_bytes(good["output"])
        refused = post(server, "api/regenerate", {"run_keys": [good["run_key"]], "reason": "again"})
        assert refused.status_code == 503 and "REDIS_URL" in refused.json()["error"]
        assert review_lines(storage, job_id) == []
        assert post(server, "api/decisions", {"run_keys": [good["run_key"]], "decision": "approve"}).status_code == 200
    assert [line["reviewer"] for line in review_lines(storage, job_id)] == ["carol@laptop"]

    # `editpipe review JOB --output ROOT` serves the same page and prints its URL; Ctrl-C stops it.
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    command = ["review", job_id, "--output", str(tmp_path / "out"), "--reviewer", "dave@desk"]
    proc = subprocess.Popen([sys.executable, "-c", "from pipeline.cli import main; main()", *command],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", url), (url, proc.stderr.read() if proc.poll() else "")
        page = httpx.get(url).text
        assert "dave@desk" in page and job_id in page
        assert len(httpx.get(url + "api/state").json()["runs"]) == 8
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    assert "regenerating needs the workers' Redis" in proc.stderr.read()


def test_add_runs_regenerates_a_source_once_and_never_adds_one_run_key_twice(state, r):
    from pipeline.plan import InputRef, Run

    r.flushall()
    run = Run(index=0, run_key="k0", image_set="s", prompt_id="p", variant=1, model="m", prompt="x",
              options={"output_format": "png"}, inputs=(InputRef("a.png", "local", "sha256:1"),), output_key="s/p/1.png",
              vars={})
    state.jobs.create("job-x", name="x", output="/tmp/x", runs=[run], total=1, estimated_usd=0, budget_usd=None,
                      created_at="2026-12-03T00:00:00Z")
    state.jobs.set_final("job-x", "succeeded", "2026-12-03T00:00:01Z")
    second = Run(**{**run.to_dict(), "index": -1, "run_key": "k1", "variant": 2, "output_key": "s/p/2.png",
                    "inputs": run.inputs})
    assert [tuple(a) for a in state.jobs.add_runs("job-x", [(0, second)])] == [("added", 1)]
    assert state.runs.run("job-x", 1).run_key == "k1" and state.runs.run("job-x", 1).index == 1
    status = state.jobs.status("job-x")
    assert (status.total, status.status, status.finished_at) == (2, "running", "")
    # The same source again (another reviewer's click), and another source with a key taken.
    third = Run(**{**second.to_dict(), "run_key": "k1", "inputs": run.inputs})
    assert [tuple(a) for a in state.jobs.add_runs("job-x", [(0, second), (5, third)])] == [("already", 1),
                                                                                          ("taken", 1)]
    assert state.jobs.status("job-x").total == 2 and state.jobs.regenerated("job-x") == {0: 1}


def test_regenerate_stays_under_the_jobs_budget_and_resume_with_more_budget_runs_it(
    tmp_path, settings, sim, workers, bucket, state
):
    # Four runs at $0.10 under a $0.40 budget: spent in full, so the regenerated run is not paid.
    workers.start(1)
    prompts = "\n  - id: editorial\n    text: A model wearing the {product}, warm natural light.\n"
    status = run_job(settings, write_manifest(tmp_path, f"s3://{bucket}/edits", sets=SETS, prompts=prompts,
                                              extra="budget_usd: 0.40\n"))
    assert (status.succeeded, status.spent_usd) == (4, Decimal("0.40")), status
    storage = open_storage(status.output, settings)
    billed = sim.stats()["billed_count"]
    source = results(storage, status.id)[0]["run_key"]
    with serve(storage, status.id, settings, state, "alice@review") as server:
        answer = post(server, "api/regenerate", {"run_keys": [source], "reason": "again"})
        assert answer.status_code == 200, answer.text
    new = answer.json()["regenerated"][0]
    status = follow(state, status.id, lambda s: None, interval_s=0.2, timeout_s=60)
    line = results(storage, status.id)[4]
    assert (line["run_key"], line["status"], line["error_kind"]) == (new["run_key"], "failed", "budget_exhausted")
    assert sim.stats()["billed_count"] == billed and status.spent_usd == Decimal("0.40")

    env = {"REDIS_URL": settings.redis_url, "S3_ENDPOINT_URL": settings.s3_endpoint_url}
    done = CliRunner().invoke(cli, ["resume", status.id, "--budget-usd", "0.50", "--wait"], env=env)
    assert done.exit_code == 0, done.output
    assert sim.stats()["billed_count"] == billed + 1
    assert results(storage, status.id)[4]["status"] == "succeeded"
    ledger = [json.loads(x) for x in storage.get_text(job_file(status.id, "ledger.jsonl")).splitlines()]
    assert len(ledger) == 5 and sum(Decimal(x["cost_usd"]) for x in ledger) == Decimal("0.50")


def test_job_redis_lost_after_a_regenerate_is_rebuilt_with_the_regenerated_run_and_pays_nothing_again(
    tmp_path, settings, sim, workers, bucket, state, r
):
    workers.start(1)
    prompts = "\n  - id: editorial\n    text: A model wearing the {product}, warm natural light.\n"
    status = run_job(settings, write_manifest(tmp_path, f"s3://{bucket}/edits", sets=SETS, prompts=prompts))
    storage = open_storage(status.output, settings)
    source = results(storage, status.id)[1]["run_key"]
    with serve(storage, status.id, settings, state, "alice@review") as server:
        new = post(server, "api/regenerate", {"run_keys": [source], "reason": "again"}).json()["regenerated"][0]
    follow(state, status.id, lambda s: None, interval_s=0.2, timeout_s=60)
    ledger_before = storage.get_text(job_file(status.id, "ledger.jsonl"))
    billed = sim.stats()["billed_count"]

    r.flushall()  # Redis lost everything
    env = {"REDIS_URL": settings.redis_url, "S3_ENDPOINT_URL": settings.s3_endpoint_url}
    done = CliRunner().invoke(cli, ["resume", status.id, "--output", status.output, "--wait"], env=env)
    assert done.exit_code == 0, done.output
    assert "0 to run" in done.output and "references changed" not in done.output
    lines = results(storage, status.id)
    assert len(lines) == 5 and lines[4]["run_key"] == new["run_key"] and lines[4]["status"] == "succeeded"
    assert sorted(storage.get_text(job_file(status.id, "ledger.jsonl")).splitlines()) == sorted(
        ledger_before.splitlines())
    assert sim.stats()["billed_count"] == billed
    assert state.runs.run(status.id, 4).run_key == new["run_key"]
