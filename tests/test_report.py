"""The report a person opens, proven in a real browser: a finished job's pages are rendered by
headless Chromium and every thumbnail must have loaded, from moto's S3 server (presigned) or
from a local folder (relative links). Also: the summary for machines, paging, the webhook."""

from __future__ import annotations

import io
import json
import re
import shutil
import threading
import time
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from PIL import Image

from chromium import ARTIFACTS, Chromium, ChromiumUnavailable, body_data, find_or_install
from conftest import API_KEY, make_image, run_job, write_manifest
from pipeline.embedded import free_port
from pipeline.errors import EditpipeError
from pipeline.failures import ErrorKind
from pipeline.ledger import LedgerEntry, LineKind, utc_now
from pipeline.state import State
from pipeline.notify import notify
from pipeline.plan import InputRef, Run
from pipeline.records import RunResult, RunStatus
from pipeline.cli.report import report_command
from pipeline.report import PAGE_SIZE, finalize_job, report_location
from pipeline.storage import LocalStorage, open_storage

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    try:
        return Chromium(find_or_install())
    except ChromiumUnavailable as exc:
        pytest.skip(f"headless Chromium is needed to look at the report: {exc}")


def attr_values(dom: str, tag: str, attr: str) -> list[str]:
    return [m.replace("&amp;", "&") for m in re.findall(rf'<{tag}\b[^>]*?\s{attr}="([^"]*)"', dom)]


def assert_every_image_loaded(dom: str, expected: int) -> None:
    data = body_data(dom)
    assert data.get("images") == str(expected), data
    assert data.get("loaded") == str(expected) and data.get("broken") == "0", data


def test_s3_report_renders_in_chromium_with_every_thumbnail_loaded_from_presigned_urls(
    tmp_path, settings, sim, workers, bucket, s3, chromium, state
):
    # One set from a local file, one from S3, one from an http URL plus a local file.
    make_image(tmp_path / "products" / "a.png", (200, 160, 40))
    make_image(tmp_path / "src.png", (40, 120, 170))
    s3.upload_file(str(tmp_path / "src.png"), bucket, "products/b.png")
    hosted = httpx.post(
        f"{sim.base_url}/api/v3/media/upload/binary",
        headers={"Authorization": f"Bearer {API_KEY}"},
        files={"file": ("c.png", (tmp_path / "src.png").read_bytes(), "image/png")},
    ).json()["data"]["download_url"]
    sets = f"""
  - id: set-a
    images: [products/a.png]
    vars: {{product: gold earrings}}
  - id: set-b
    images: [s3://{bucket}/products/b.png]
    vars: {{product: silver hoops}}
  - id: set-c
    images: ["{hosted}", products/a.png]
    vars: {{product: ruby studs}}"""
    prompts = """
  - id: editorial
    text: A model wearing the {product}, warm natural light.
  - id: storm
    text: "[sim:fail] The {product} in a storm.\""""
    manifest = write_manifest(tmp_path, f"s3://{bucket}/edits", sets, prompts, "budget_usd: 5.00")
    sim.configure(image_long_side=768)  # outputs bigger than a thumbnail: each gets one
    workers.start(count=1, concurrency=4)

    status = run_job(settings, manifest)

    assert status.status == "partial", workers.logs()[-3000:]
    storage = open_storage(f"s3://{bucket}/edits", settings)
    prefix = f"jobs/{status.id}"
    thumbs = [k for k in storage.list_keys(f"{prefix}/thumbs/")]
    # Six outputs, plus one per reference image the report can read (local a.png, s3 b.png).
    assert len([k for k in thumbs if not k.rsplit("/", 1)[1].startswith("in-")]) == 6
    results = [json.loads(line) for line in storage.get_text(f"{prefix}/results.jsonl").splitlines()]
    assert {r["thumbnail"] for r in results if r["status"] == "succeeded"} == {
        f"{prefix}/thumbs/{r['index']}.jpg" for r in state.runs.results(status.id) if r["status"] == "succeeded"}
    assert len([k for k in thumbs if k.rsplit("/", 1)[1].startswith("in-")]) == 2
    url = report_location(storage, status.id)
    assert url.startswith(settings.s3_endpoint_url) and "X-Amz-Signature=" in url

    dom = chromium.dump_dom(url)
    chromium.screenshot(url, ARTIFACTS / "report-s3.png", window=(1280, 1500))

    # 12 cards: inputs (1, 1 and 2 per set, 4 runs each) and the 6 outputs that exist.
    assert_every_image_loaded(dom, 16 + 6)
    assert dom.count('<article class="run') == 12
    assert "Failed runs (6)" in dom and "simulated failure" in dom
    # Every output opens the full image, presigned for a week.
    outputs = [h for h in attr_values(dom, "a", "href") if "/thumbs/" not in h and ".png?" in h
               and "/products/" not in h]
    assert len(outputs) == 6
    results = [json.loads(line) for line in storage.get_text(f"{prefix}/results.jsonl").splitlines()]
    expected = {r["output"] for r in results if r["status"] == "succeeded"}
    assert {httpx.URL(h).path.split("/edits/", 1)[1] for h in outputs} == expected
    for href in outputs:
        assert "X-Amz-Expires=604800" in href
        got = httpx.get(href)
        assert got.status_code == 200 and Image.open(io.BytesIO(got.content)).format == "PNG"
    summary = json.loads(storage.get_text(f"{prefix}/summary.json"))
    assert summary["counts"] == {"planned": 12, "succeeded": 6, "skipped": 0, "failed": 6, "unfinished": 0}
    assert summary["budget_usd"] == "5.00" and summary["spent_usd"] == "0.60"
    assert Decimal(summary["budget_remaining_usd"]) == Decimal("4.40") and summary["budget_used_pct"] == 12.0
    assert 0 < summary["duration_s"] < 120
    [reason] = summary["failure_reasons"]
    assert reason["count"] == 6 and "simulated failure" in reason["reason"]
    assert summary["report"] == f"s3://{bucket}/edits/{prefix}/report.html"
    # `editpipe report JOB --refresh` writes the pages again with fresh links and prints one.
    done = CliRunner().invoke(report_command, [status.id, "--refresh"],
                              env={"REDIS_URL": settings.redis_url, "S3_ENDPOINT_URL": settings.s3_endpoint_url})
    assert done.exit_code == 0, done.output
    page = httpx.get(done.output.strip())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.text.count('<article class="run') == 12


def test_a_local_report_is_paged_and_every_page_loads_even_after_the_folder_moves(
    tmp_path, settings, sim, workers, state, chromium
):
    for name, color in (("a", (200, 160, 40)), ("b", (120, 140, 170)), ("c", (170, 20, 40))):
        make_image(tmp_path / "products" / f"{name}.png", color)
    sets = "".join(f"""
  - id: set-{n}
    images: [products/{n}.png]
    vars: {{product: item {n}}}""" for n in "abc")
    prompts = """
  - id: editorial
    text: A model wearing the {product}.
  - id: flatlay
    text: A flat-lay of the {product}."""
    manifest = write_manifest(tmp_path, "out", sets, prompts)
    workers.start(count=1, concurrency=4)
    status = run_job(settings, manifest)
    assert status.status == "succeeded", workers.logs()[-3000:]
    storage = LocalStorage(tmp_path / "out")

    finalize_job(state, storage, status.id, page_size=5)

    job_dir = tmp_path / "out" / "jobs" / status.id
    assert [p.name for p in (job_dir / "thumbs").iterdir() if not p.name.startswith("in-")] == []
    results = [json.loads(line) for line in (job_dir / "results.jsonl").read_text().splitlines()]
    assert all(r["thumbnail"] == r["output"] for r in results)
    pages = [job_dir / "report.html", job_dir / "report-2.html", job_dir / "report-3.html"]
    assert all(p.is_file() for p in pages)
    assert json.loads((job_dir / "summary.json").read_text())["pages"] == 3
    moved = tmp_path / "moved"
    shutil.copytree(tmp_path / "out", moved)
    for n, cards, links in ((1, 5, {"report-2.html", "report-3.html"}),
                            (2, 5, {"report.html", "report-3.html"}),
                            (3, 2, {"report.html", "report-2.html"})):
        page = moved / "jobs" / status.id / pages[n - 1].name
        dom = chromium.dump_dom(page.as_uri())
        assert dom.count('<article class="run') == cards
        assert_every_image_loaded(dom, cards * 2)  # one input, one output each
        hrefs = set(attr_values(dom, "a", "href"))
        assert links <= hrefs
        # Outputs and thumbnails are linked relatively: the moved copy shows its own files.
        # The simulator's outputs (256 px) are no bigger than a thumbnail: shown as they are.
        sources = attr_values(dom, "img", "src")
        assert all(src.startswith(("thumbs/in-", "../../set-")) for src in sources), sources
        assert sum(src.startswith("../../set-") for src in sources) == cards
        assert all(not h.startswith(("/", "http")) for h in hrefs if not h.startswith("file://"))
    chromium.screenshot((moved / "jobs" / status.id / "report-2.html").as_uri(), ARTIFACTS / "report-local-page2.png",
                        window=(1280, 1200))


def new_job(state: State, root: Path, runs: list[Run], *, budget: Decimal | None = None) -> str:
    job_id = f"synthetic-{time.time_ns()}"
    state.jobs.create(job_id, name="synthetic", output=str(root), runs=runs, total=len(runs),
                estimated_usd=Decimal("0.10") * len(runs), budget_usd=budget, created_at=utc_now())
    return job_id


def test_a_thousand_run_job_finalizes_and_a_second_finalize_reuses_the_thumbnails(tmp_path, state):
    storage = LocalStorage(tmp_path / "out")
    source = make_image(tmp_path / "in.png", (90, 90, 90))
    ref = InputRef(str(source), "local", "sha256:" + "ab" * 32)
    Image.new("RGB", (1024, 1536), (30, 80, 160)).save(tmp_path / "o.png")
    output = (tmp_path / "o.png").read_bytes()
    runs = [Run(i, f"{i:064x}", f"set-{i}", "p", 1, "m", "prompt", {"aspect_ratio": "2:3"}, (ref,),
                f"set-{i}/p.png", {}) for i in range(1000)]
    job_id = new_job(state, tmp_path / "out", runs)
    for run in runs:
        storage.put_bytes(run.output_key, output)
        state.runs.finish_run(job_id, run.index, outcome="succeeded", result={
            "index": run.index, "run_key": run.run_key, "image_set": run.image_set, "prompt": "p",
            "variant": 1, "options": run.options, "status": "succeeded", "output": run.output_key,
            "prediction_id": f"pred-{run.index}", "cost_usd": "0.10", "error": None})

    finalize_job(state, storage, job_id)
    thumbs = sorted(storage.list_keys(f"jobs/{job_id}/thumbs/"))
    assert len(thumbs) == 1001  # one per output, one for the input all runs share
    made = {key: (tmp_path / "out" / key).stat().st_ino for key in thumbs}  # a write is a new file (rename)

    finalize_job(state, storage, job_id)
    assert sorted(storage.list_keys(f"jobs/{job_id}/thumbs/")) == thumbs
    assert {key: (tmp_path / "out" / key).stat().st_ino for key in thumbs} == made  # none made again
    assert len(list(storage.list_keys(f"jobs/{job_id}/report"))) == 1000 // PAGE_SIZE


def test_a_result_and_a_ledger_line_keep_their_json_through_the_typed_values():
    run = Run(4, "c" * 64, "shoes", "studio", 2, "m", "prompt", {"aspect_ratio": "3:2"},
              (InputRef("/in/a.png", "local", "sha256:" + "ab" * 32),), "shoes/studio-2.png", {})
    failed = RunResult.of(run, RunStatus.FAILED, error="boom", retryable=True, error_kind=ErrorKind.MODERATION,
                          code=1200).to_dict()
    succeeded = RunResult.of(run, RunStatus.SUCCEEDED, output=run.output_key, prediction_id="p1",
                             cost_usd=Decimal("0.1"), thumbnail="t.jpg").to_dict()
    line = LedgerEntry("p1", run.run_key, "j", "m", Decimal("0.035"), utc_now(), LineKind.UNCONFIRMED_SUBMIT)

    assert list(failed) == ["index", "run_key", "image_set", "prompt", "variant", "options", "status", "output",
                            "prediction_id", "cost_usd", "error", "finished_at", "retryable", "not_started",
                            "error_kind", "code"]
    assert failed["error_kind"] == "moderation" and failed["code"] == 1200
    assert succeeded["cost_usd"] == "0.10" and succeeded["thumbnail"] == "t.jpg" and "retryable" not in succeeded
    for stored in (failed, succeeded):
        assert RunResult.from_dict(json.loads(json.dumps(stored))).to_dict() == stored
    assert line.to_dict()["cost_usd"] == "0.035" and line.to_dict()["kind"] == "unconfirmed_submit"
    assert LedgerEntry.from_dict(json.loads(json.dumps(line.to_dict()))) == line


# The webhook


class Hook:
    """A webhook on a free loopback port that answers the statuses it is given, in turn."""

    def __init__(self, statuses: list[int]):
        self.statuses = list(statuses)
        self.bodies: list[bytes] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hook.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                code = hook.statuses.pop(0) if hook.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T0K3N-s3cr3t"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook_factory():
    hooks = []

    def make(statuses: list[int]) -> Hook:
        hooks.append(Hook(statuses))
        return hooks[-1]

    yield make
    for h in hooks:
        h.close()


def test_notify_retries_5xx_until_the_webhook_takes_the_summary(hook_factory, caplog):
    hook = hook_factory([500, 500])
    summary = {"job_id": "j1", "status": "succeeded", "spent_usd": "1.20"}

    assert notify(hook.url, summary, initial_wait_s=0.05) is True

    assert len(hook.bodies) == 3
    assert json.loads(hook.bodies[-1]) == summary
    assert "T0K3N-s3cr3t" not in caplog.text


def test_notify_gives_up_on_an_unreachable_webhook_without_raising(caplog):
    url = f"http://127.0.0.1:{free_port()}/hooks/T0K3N-s3cr3t"
    started = time.monotonic()

    assert notify(url, {"job_id": "j2"}, attempts=3, initial_wait_s=0.05) is False

    assert time.monotonic() - started < 10
    assert "gave up after 3 tries" in caplog.text and "T0K3N-s3cr3t" not in caplog.text


def test_notify_does_not_retry_a_refusal(hook_factory):
    hook = hook_factory([404])
    assert notify(hook.url, {"job_id": "j3"}, initial_wait_s=0.05) is False
    assert len(hook.bodies) == 1


def test_finalize_posts_the_summary_to_the_jobs_notify_url_after_writing_its_files(tmp_path, state, hook_factory):
    hook = hook_factory([503])
    job_id = new_job(state, tmp_path / "out", [], budget=Decimal("2"))
    state.jobs.set_fields(job_id, {"notify_url": hook.url})

    status = finalize_job(state, LocalStorage(tmp_path / "out"), job_id)

    assert status.status == "succeeded"
    posted = json.loads(hook.bodies[-1])
    written = json.loads((tmp_path / "out" / "jobs" / job_id / "summary.json").read_text())
    assert posted == written and posted["job_id"] == job_id and posted["budget_remaining_usd"] == "2.00"
    assert "no runs" in (tmp_path / "out" / "jobs" / job_id / "report.html").read_text()


def test_finalize_succeeds_when_the_webhook_is_down(tmp_path, state):
    job_id = new_job(state, tmp_path / "out", [])
    state.jobs.set_fields(job_id, {"notify_url": f"http://127.0.0.1:{free_port()}/"})

    status = finalize_job(state, LocalStorage(tmp_path / "out"), job_id)

    assert status.status == "succeeded"


# The command


def test_report_command_prints_the_report_and_opens_it(tmp_path, state, settings):
    job_id = new_job(state, tmp_path / "out", [])
    finalize_job(state, LocalStorage(tmp_path / "out"), job_id)
    opened = tmp_path / "opened.txt"
    browser = tmp_path / "browser.sh"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    browser.chmod(0o755)
    env = {"REDIS_URL": settings.redis_url, "BROWSER": str(browser)}

    done = CliRunner().invoke(report_command, [job_id, "--open"], env=env)

    report = tmp_path / "out" / "jobs" / job_id / "report.html"
    assert done.exit_code == 0, done.output
    assert done.output.strip() == str(report.resolve())
    for _ in range(50):
        if opened.exists():
            break
        time.sleep(0.1)
    assert opened.read_text().strip() == report.resolve().as_uri()


def test_report_command_refuses_a_job_still_running(tmp_path, state, settings):
    job_id = new_job(state, tmp_path / "out", [Run(0, "0" * 64, "s", "p", 1, "m", "t", {}, (), "s/p.png", {})])

    done = CliRunner().invoke(report_command, [job_id], env={"REDIS_URL": settings.redis_url})

    assert isinstance(done.exception, EditpipeError) and "still queued" in str(done.exception)
