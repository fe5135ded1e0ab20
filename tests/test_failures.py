"""Failure codes: a failed prediction's ``code`` decides whether its run is submitted again.

Transient (5000, 5003, 5004, no code, the status ``timeout``): the run starts again through
its normal start path, up to ``EDITPIPE_MAX_RETRIES`` failed predictions, and nothing is
charged for the failed ones. Permanent (moderation 1200, input errors 14xx, ``cancelled``,
``deleted``): the run ends ``failed`` with its code and ``error_kind``, in ``results.jsonl``
and the report, and ``editpipe resume`` leaves it be. Proven against the simulator over
HTTP, real Redis and moto's S3; the last tests through Celery workers.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import API_KEY, make_image, read_jsonl, run_job
from pipeline.dispatch import Dispatch, poll_due, pump
from pipeline.execution import Context, poll_run, start_run
from pipeline.failures import ErrorKind, classify
from pipeline.report import finalize_job
from pipeline.settings import Settings
from pipeline.simulator import SimConfig, Simulator
from pipeline.state import flush, keys
from pipeline.submission import prepare, resume, submit

MODEL = "openai/gpt-image-2/edit"


class NoTasks:
    """The engine's ``Tasks``, dropped: these tests carry out each step themselves."""

    def wake_pumps(self) -> None: ...
    def wake_poller(self) -> None: ...
    def collect(self, completed) -> None: ...
    def finalize(self, job_id: str) -> None: ...


@pytest.fixture
def codes_sim(sim: Simulator):
    """The session's simulator, with its ``fail_code`` put back after the test."""
    yield sim
    sim.configure(fail_code=SimConfig().fail_code)


# ---- what a code means -------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "code", "kind", "transient"), [
    ("failed", 5000, ErrorKind.PROVIDER_ERROR, True),
    ("failed", 5003, ErrorKind.PROVIDER_ERROR, True),
    ("failed", 5004, ErrorKind.PROVIDER_ERROR, True),
    ("failed", None, ErrorKind.PROVIDER_ERROR, True),
    ("timeout", None, ErrorKind.PROVIDER_ERROR, True),
    ("failed", 1200, ErrorKind.MODERATION, False),
    ("failed", 1400, ErrorKind.BAD_INPUT, False),
    ("failed", 1401, ErrorKind.BAD_INPUT, False),
    ("failed", 1402, ErrorKind.MEDIA_UNREACHABLE, False),
    ("failed", 1403, ErrorKind.EDIT_FAILED, False),
    ("failed", 1405, ErrorKind.EDIT_FAILED, False),
    ("cancelled", None, ErrorKind.CANCELLED, False),
    ("deleted", None, ErrorKind.CANCELLED, False),
])
def test_a_failure_code_decides_the_kind_and_whether_the_run_is_submitted_again(status, code, kind, transient):
    failure = classify(status, code, "the provider's words")
    assert (failure.kind, failure.transient, failure.code) == (kind, transient, code)
    assert "the provider's words" in failure.reason and (code is None or f"code {code}" in failure.reason)


# ---- the simulator injects each kind ------------------------------------------------------------


def _submit_and_wait(http: httpx.Client, image_url: str, prompt: str, run_key: str) -> dict:
    answer = http.post(f"/api/v3/{MODEL}", json={"images": [image_url], "prompt": prompt},
                       headers={"X-Editpipe-Run-Key": run_key})
    assert answer.status_code == 200, answer.text
    pred_id = answer.json()["data"]["id"]
    deadline = time.monotonic() + 10
    while True:
        data = http.get(f"/api/v3/predictions/{pred_id}/result").json()["data"]
        if data["status"] not in ("created", "processing"):
            return data
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_simulator_fails_predictions_with_the_code_each_marker_asks_for(codes_sim, tmp_path):
    sim = codes_sim
    sim.configure(latency_s=0.0, jitter_s=0.0)
    with httpx.Client(base_url=sim.base_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10) as http:
        make_image(tmp_path / "in.png")
        ticket = http.post("/api/v3/media/upload/binary",
                           files={"file": ("in.png", (tmp_path / "in.png").read_bytes(), "image/png")})
        image = ticket.json()["data"]["download_url"]

        moderated = _submit_and_wait(http, image, "x [sim:fail:1200]", "k-mod")
        again = _submit_and_wait(http, image, "x [sim:fail:1200]", "k-mod")
        once = [_submit_and_wait(http, image, "x [sim:fail-once:5000]", "k-once") for _ in range(2)]
        bare = _submit_and_wait(http, image, "x [sim:fail]", "k-bare")
        timeout = _submit_and_wait(http, image, "x [sim:status-once:timeout]", "k-timeout")
        cancelled = _submit_and_wait(http, image, "x [sim:status:cancelled]", "k-cancel")
        codeless = _submit_and_wait(http, image, "x [sim:fail:none]", "k-none")
        unreachable = _submit_and_wait(http, sim.base_url + "/_sim/media/nothing/here.png", "x", "k-url")
        sim.configure(fail_rate=1.0, fail_code=5003)
        by_rate = _submit_and_wait(http, image, "x", "k-rate")
        sim.configure(fail_rate=0.0)
        healthy = _submit_and_wait(http, image, "x", "k-ok")

    assert (moderated["status"], moderated["code"]) == (again["status"], again["code"]) == ("failed", 1200)
    assert "moderation" in moderated["error"] and moderated["outputs"] == []
    assert [(p["status"], p.get("code")) for p in once] == [("failed", 5000), ("completed", None)]
    assert (bare["status"], bare["code"], bare["error"]) == ("failed", 1403, "simulated failure")
    assert (timeout["status"], cancelled["status"]) == ("timeout", "cancelled")
    assert codeless["status"] == "failed" and "code" not in codeless
    assert (unreachable["status"], unreachable["code"]) == ("failed", 1402)
    assert (by_rate["status"], by_rate["code"]) == ("failed", 5003)
    assert healthy["status"] == "completed" and "code" not in healthy
    billed = {p["run_key"] for p in sim.predictions() if p["billed"]}
    assert billed == {"k-once", "k-ok"}  # nothing that ended otherwise is billed


# ---- one run's steps ---------------------------------------------------------------------------


@pytest.fixture
def fresh(settings: Settings) -> Settings:
    flush(settings.redis_url or "")
    return settings


def one_run_job(tmp_path: Path, settings: Settings, dispatch: Dispatch, bucket: str, prompt: str) -> str:
    image = tmp_path / "img" / "0.png"
    image.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), (10, 120, 40)).save(image)
    manifest = tmp_path / "one.yaml"
    manifest.write_text(f"version: 1\nname: one\noutput: s3://{bucket}/one\nimage_sets:\n"
                        f"  - id: set-0\n    images: [img/0.png]\nprompts:\n  - id: p\n    text: \"{prompt}\"\n")
    return submit(prepare(manifest, settings), dispatch.state, dispatch.add_job, finalize=finalize_job)


def wait_ended(sim: Simulator, count: int, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while sum(p["status"] not in ("created", "processing") for p in sim.predictions()) < count:
        assert time.monotonic() < deadline, sim.predictions()
        time.sleep(0.02)


def test_a_transient_failure_starts_the_run_again_once_with_its_reservation_kept(tmp_path, fresh, sim, bucket, r):
    sim.configure(latency_s=0.0, jitter_s=0.0)
    ctx = Context.from_settings(fresh)
    job_id = one_run_job(tmp_path, fresh, Dispatch(ctx, NoTasks()), bucket, "A shot. [sim:fail-once:5000]")
    assert start_run(ctx, job_id, 0, token="t1").action == "poll"
    failed_id = ctx.state.runs.prediction_of(job_id, 0)
    held = r.hget(keys.job(job_id), "held_micros")
    wait_ended(sim, 1)
    stale = ctx.state.runs.states([(job_id, 0)])[0]  # what a second check of the run read before

    retry = poll_run(ctx, job_id, 0)
    duplicate = poll_run(ctx, job_id, 0, state=stale)  # another check of the same failed prediction

    assert (retry.action, duplicate.action) == ("submit", "done")
    assert ctx.state.runs.prediction_of(job_id, 0) is None
    assert r.hget(keys.job(job_id, "failed"), "0") == "1"
    assert r.hget(keys.job(job_id), "held_micros") == held and r.hexists(keys.job(job_id, "reserved"), "0")
    assert ctx.limits.in_use() == 0  # its slot came back until the new submit takes one
    # A check that died after giving the prediction up left a run without one: it is started.
    assert poll_run(ctx, job_id, 0).action == "submit"

    assert start_run(ctx, job_id, 0, token="t2").action == "poll"
    assert start_run(ctx, job_id, 0, token="t3").action == "poll"  # the start filed twice: submits once
    wait_ended(sim, 2)
    assert poll_run(ctx, job_id, 0).action == "collect"
    predictions = sim.predictions()
    assert len(predictions) == 2 and [p["billed"] for p in predictions].count(True) == 1
    assert failed_id in {p["id"] for p in predictions if not p["billed"]}


def test_a_poller_that_dies_after_giving_up_a_failed_prediction_loses_nothing(tmp_path, fresh, sim, bucket):
    # Through the due index: the run is popped and submitted by a pump, then the check that
    # saw its prediction fail dies right after giving it up (before filing the new start).
    sim.configure(latency_s=0.0, jitter_s=0.0)
    ctx = Context.from_settings(fresh)
    dispatch = Dispatch(ctx, NoTasks())
    job_id = one_run_job(tmp_path, fresh, dispatch, bucket, "A shot. [sim:fail-once:5004]")
    assert pump(dispatch, "pump") is False
    failed_id = ctx.state.runs.prediction_of(job_id, 0)
    wait_ended(sim, 1)
    assert ctx.state.runs.drop_failed_prediction(job_id, 0, failed_id, 6) == 1  # what the dead check did

    deadline = time.monotonic() + 20
    while len(sim.predictions()) < 2 or sim.predictions()[-1]["status"] != "completed":
        assert time.monotonic() < deadline, sim.predictions()
        poll_due(dispatch)  # its check comes due again, finds no prediction, and starts the run
        time.sleep(0.2)

    assert len(sim.predictions()) == 2 and sim.stats()["billed_count"] == 1
    assert ctx.state.runs.prediction_of(job_id, 0) == sim.predictions()[-1]["id"]


def test_a_run_whose_predictions_keep_failing_ends_failed_once_its_retries_are_spent_and_resume_retries_it(
    tmp_path, fresh, sim, bucket
):
    sim.configure(latency_s=0.0, jitter_s=0.0)
    ctx = Context.from_settings(fresh.with_overrides(max_transient_retries=2))
    job_id = one_run_job(tmp_path, fresh, Dispatch(ctx, NoTasks()), bucket, "A shot. [sim:fail:5003]")
    steps = []
    for attempt in range(3):
        assert start_run(ctx, job_id, 0, token=f"t{attempt}").action == "poll"
        wait_ended(sim, attempt + 1)
        steps.append(poll_run(ctx, job_id, 0).action)

    assert steps == ["submit", "submit", "finalize"]
    result = ctx.state.runs.results(job_id)[0]
    assert result["status"] == "failed" and result["error_kind"] == "provider_error" and result["code"] == 5003
    assert result["retryable"] is True and "gave up after 3 failed predictions" in result["error"]
    assert ctx.state.jobs.status(job_id).spent_usd == 0 and sim.stats()["billed_count"] == 0
    # Spent retries are for now: `editpipe resume` runs it again, from its last prediction.
    finalize_job(ctx.state, ctx.storage(ctx.state.jobs.output_root(job_id)), job_id)
    assert resume(ctx.state, job_id, lambda job, indices: None) == [0]
    assert start_run(ctx, job_id, 0, token="after-resume").action == "poll"
    assert poll_run(ctx, job_id, 0).action == "submit" and len(sim.predictions()) == 3


# ---- a job through workers ---------------------------------------------------------------------


def test_transient_failures_are_submitted_again_and_only_permanent_ones_fail(
    tmp_path, settings, codes_sim, workers, bucket, s3, state
):
    sim = codes_sim
    sim.configure(fail_rate=0.15, seed=7)  # code 5000, the simulator's default
    sets = "".join(f"\n  - id: s{i:02d}\n    images: [p.png]\n    vars: {{product: item {i}}}" for i in range(12))
    make_image(tmp_path / "p.png")
    manifest = tmp_path / "codes.yaml"
    manifest.write_text(
        f"version: 1\nname: codes\noutput: s3://{bucket}/out\nimage_sets:{sets}\nprompts:\n"
        "  - id: plain\n    text: The {product} on linen.\n"
        "  - id: studio\n    text: The {product} in a studio.\n"
        "  - id: refused\n    text: \"[sim:fail:1200] The {product} at night.\"\n"
        "  - id: slow\n    text: \"[sim:status-once:timeout] The {product} at dawn.\"\n"
        "  - id: dropped\n    text: \"[sim:status:cancelled] The {product} by the sea.\"\n"
        "output_key: \"{image_set}/{prompt}\"\n"
    )
    workers.start(count=1, concurrency=4)

    status = run_job(settings, manifest, timeout_s=240)

    results = read_jsonl(s3, bucket, f"out/jobs/{status.id}/results.jsonl")
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    by_prompt = {p: [r for r in results if r["prompt"] == p] for p in ("plain", "studio", "refused", "slow", "dropped")}
    predictions = sim.predictions()
    failed_5000 = [p for p in predictions if p["code"] == 5000]
    print(f"\n{len(predictions)} predictions, {len(failed_5000)} failed with 5000; "
          f"{Counter(r['status'] for r in results)}")
    assert len(results) == 60 and status.status == "partial"
    # Every run a transient failure met succeeded on a later submit, timeouts included.
    transient = by_prompt["plain"] + by_prompt["studio"] + by_prompt["slow"]
    assert all(r["status"] == "succeeded" for r in transient), workers.logs()[-3000:]
    assert len(failed_5000) >= 3 and {p["status"] for p in failed_5000} == {"failed"}
    succeeded_keys = {r["run_key"] for r in results if r["status"] == "succeeded"}
    assert {p["run_key"] for p in failed_5000 if p["run_key"] in succeeded_keys}  # retried, then succeeded
    assert sum(p["status"] == "timeout" for p in predictions) == 12
    # Exactly the moderated runs failed with 1200, tried once each; the cancelled ones likewise.
    failed = [r for r in results if r["status"] == "failed"]
    assert sorted(r["prompt"] for r in failed) == ["dropped"] * 12 + ["refused"] * 12
    assert all((r["code"], r["error_kind"], r["retryable"]) == (1200, "moderation", False)
               for r in by_prompt["refused"])
    assert all("moderation" in r["error"] for r in by_prompt["refused"])
    assert all((r["error_kind"], r["retryable"]) == ("cancelled", False) for r in by_prompt["dropped"])
    tried = Counter(p["run_key"] for p in predictions)
    assert all(tried[r["run_key"]] == 1 for r in failed)
    # Money: one billed prediction per succeeded run, none for a failed one, ledger equal to the bill.
    billed = [p for p in predictions if p["billed"]]
    assert len(billed) == len(ledger) == len(succeeded_keys) == 36
    assert {p["run_key"] for p in billed} == succeeded_keys
    assert sum(Decimal(x["cost_usd"]) for x in ledger) == Decimal(sim.stats()["billed_usd"]) == status.spent_usd
    # The report and the summary show each failure's kind and code.
    summary = read_json(s3, bucket, f"out/jobs/{status.id}/summary.json")
    assert summary["failure_kinds"] == {"moderation": 12, "cancelled": 12}
    page = s3.get_object(Bucket=bucket, Key=f"out/jobs/{status.id}/report.html")["Body"].read().decode()
    assert "moderation <span class=\"code\">1200</span>" in page and "<th>kind</th>" in page
    # Permanent failures are not run again by `editpipe resume`.
    assert resume(state, status.id, lambda job_id, indices: None) == []


def read_json(s3, bucket: str, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
