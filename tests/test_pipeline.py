"""End to end: manifest → workers → simulator → S3, proven by what the simulator and the
S3 server saw, not by what editpipe says about itself."""

from __future__ import annotations

import json
from decimal import Decimal

import httpx
import pytest
from PIL import Image

from conftest import API_KEY, make_image, read_jsonl, run_job, with_key, write_manifest

pytestmark = pytest.mark.timeout(240)


def s3_keys(s3, bucket: str, prefix: str = "") -> list[str]:
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", ())]
    return keys


def test_twelve_runs_end_with_outputs_sidecars_results_and_a_ledger_matching_the_bill(
    tmp_path, settings, sim, workers, bucket, s3
):
    # One set from a local file (uploaded), one from S3 (presigned), one from an http URL.
    make_image(tmp_path / "src.png", (10, 200, 90))
    s3.upload_file(str(tmp_path / "src.png"), bucket, "products/b.png")
    hosted = httpx.post(
        f"{sim.base_url}/api/v3/media/upload/binary",
        headers={"Authorization": f"Bearer {API_KEY}"},
        files={"file": ("c.png", (tmp_path / "src.png").read_bytes(), "image/png")},
    ).json()["data"]["download_url"]
    uploads_before = sim.stats()["uploads"]
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
    manifest = write_manifest(tmp_path, f"s3://{bucket}/edits", sets=sets)
    workers.start(count=2, concurrency=4)

    status = run_job(settings, manifest)

    assert status.status == "succeeded", workers.logs()[-3000:]
    prefix = f"edits/jobs/{status.id}/"
    keys = s3_keys(s3, bucket, "edits/")
    records = [k for k in keys if k.startswith((prefix, "edits/_index/"))]
    outputs = [k for k in keys if k.endswith(".png") and k not in records]
    sidecars = [k for k in keys if k.endswith(".json") and k not in records]
    assert len(outputs) == 12 and len(sidecars) == 12
    for name in ("manifest.yaml", "job.json", "results.jsonl", "ledger.jsonl", "report.html", "summary.json"):
        assert prefix + name in keys
    results = read_jsonl(s3, bucket, prefix + "results.jsonl")
    assert len(results) == 12 and {r["status"] for r in results} == {"succeeded"}
    assert {"edits/" + r["output"] for r in results} == set(outputs)
    ledger = read_jsonl(s3, bucket, prefix + "ledger.jsonl")
    stats = sim.stats()
    assert len(ledger) == stats["billed_count"] == 12
    assert sum(Decimal(line["cost_usd"]) for line in ledger) == Decimal(stats["billed_usd"]) == Decimal("1.20")
    assert {line["prediction_id"] for line in ledger} == {r["prediction_id"] for r in results}
    assert stats["duplicate_submissions"] == 0
    index = read_jsonl(s3, bucket, f"edits/_index/jobs/{status.id}.jsonl")
    assert {(line["run_key"], line["output"]) for line in index} == {(r["run_key"], r["output"]) for r in results}
    # S3 references reached the provider as presigned URLs, which it fetched.
    s3_inputs = [u for p in sim.predictions() for u in p["images"] if f"/{bucket}/products/b.png" in u]
    assert s3_inputs and all("X-Amz-Signature=" in u for u in s3_inputs)
    # The one local file was uploaded once, however many runs use it.
    assert stats["uploads"] - uploads_before == 1
    sidecar = json.loads(s3.get_object(Bucket=bucket, Key=sidecars[0])["Body"].read())
    for field in ("prompt", "inputs", "options", "prediction_id", "cost_usd"):
        assert sidecar[field]
    # The output really is an image of the requested aspect ratio.
    first = next(r for r in results if r["options"]["aspect_ratio"] == "2:3")
    body = s3.get_object(Bucket=bucket, Key="edits/" + first["output"])["Body"]
    width, height = Image.open(body).size
    assert abs(width / height - 2 / 3) < 0.02


def test_failed_prediction_and_bad_request_fail_only_their_runs_and_cost_nothing(
    tmp_path, settings, sim, workers, bucket, s3
):
    prompts = """
  - id: ok
    text: A model wearing the {product}.
  - id: doomed
    text: "[sim:fail] The {product} in a storm."
  - id: rejected
    text: "[sim:400] The {product} on the moon.\""""
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", prompts=prompts)
    workers.start()

    status = run_job(settings, manifest)

    assert status.status == "partial"
    assert (status.succeeded, status.failed) == (6, 12)
    results = read_jsonl(s3, bucket, f"out/jobs/{status.id}/results.jsonl")
    by_prompt = {p: [r for r in results if r["prompt"] == p] for p in ("ok", "doomed", "rejected")}
    assert all(r["status"] == "succeeded" for r in by_prompt["ok"])
    assert all(r["status"] == "failed" and "simulated failure" in r["error"] for r in by_prompt["doomed"])
    assert all(r["status"] == "failed" and "400" in r["error"] for r in by_prompt["rejected"])
    assert all(r["cost_usd"] == "0.00" for r in by_prompt["doomed"] + by_prompt["rejected"])
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    stats = sim.stats()
    assert stats["billed_count"] == len(ledger) == 6
    assert sum(Decimal(x["cost_usd"]) for x in ledger) == Decimal(stats["billed_usd"]) == status.spent_usd
    assert stats["count_400"] == 6  # each rejected run was tried once: a 400 is never retried


def test_rejected_api_key_stops_the_job_with_a_clear_message_and_never_leaks_the_key(
    tmp_path, settings, sim, workers, bucket, s3
):
    wrong = "wrong-key-7f3a9c1e55"
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out")
    workers.settings = with_key(settings, wrong)
    workers.start()

    status = run_job(settings, manifest)

    assert status.status == "failed"
    assert "API key" in status.error and "401" in status.error
    assert status.succeeded == 0 and status.failed == 12
    stats = sim.stats()
    assert stats["created"] == 0 and stats["billed_count"] == 0
    # It stopped: far fewer submits than runs reached the provider.
    assert stats["count_401"] < 12
    everything = workers.logs() + "".join(
        s3.get_object(Bucket=bucket, Key=k)["Body"].read().decode(errors="replace")
        for k in s3_keys(s3, bucket, "out/jobs/")
    )
    assert wrong not in everything and API_KEY not in everything


def test_429s_and_5xx_are_retried_and_the_job_completes(tmp_path, settings, sim, workers, bucket, s3):
    sim.configure(max_concurrent=2, error_5xx_rate=0.15)
    # The random 5xx come from the simulator's seeded draws, whose order follows the timing of
    # the submits (a 1% change of the start rate left this job without one): half the runs
    # meet a 5xx for sure on their first submit.
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", prompts="""
  - id: editorial
    text: A model wearing the {product}, warm natural light. [sim:500-once]
  - id: flatlay
    text: A flat-lay of the {product} on beige linen.""")
    workers.start(count=1, concurrency=6)

    status = run_job(settings, manifest, timeout_s=180)

    stats = sim.stats()
    assert status.status == "succeeded", workers.logs()[-3000:]
    assert stats["count_429"] > 0 and stats["injected_5xx"] >= 6
    assert stats["peak_concurrency"] <= 2
    assert stats["billed_count"] == 12 and status.spent_usd == Decimal(stats["billed_usd"])


def test_an_output_whose_download_fails_once_is_collected_by_its_retry_and_charged_once(
    tmp_path, settings, sim, workers, bucket, s3
):
    # The poller hands completed predictions to collection several to a message: a download
    # that fails for now is retried on its own, without holding up or losing the others.
    prompts = """
  - id: steady
    text: A model wearing the {product}.
  - id: flaky
    text: "[sim:output-500-once] The {product} on a marble table.\""""
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", prompts=prompts)
    workers.start(count=1, concurrency=4)

    status = run_job(settings, manifest)

    stats = sim.stats()
    assert status.status == "succeeded", workers.logs()[-3000:]
    assert stats["injected_output_5xx"] == 6  # each flaky run's first download
    results = read_jsonl(s3, bucket, f"out/jobs/{status.id}/results.jsonl")
    assert len(results) == 12 and all(r["status"] == "succeeded" for r in results)
    outputs = [r["output"] for r in results]
    stored = set(s3_keys(s3, bucket, "out/"))
    assert len(set(outputs)) == 12 and all(f"out/{key}" in stored for key in outputs)
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    assert stats["billed_count"] == len(ledger) == 12
    assert sorted(line["prediction_id"] for line in ledger) == sorted(r["prediction_id"] for r in results)
    assert sum(Decimal(line["cost_usd"]) for line in ledger) == Decimal(stats["billed_usd"]) == status.spent_usd
