"""Reconcile against the bill: the ledger checked against the provider's billing records, and
``--settle`` making it equal to them. Every figure is what the simulator billed and what
storage holds; the command runs as a person runs it (its click entry point, real Redis, S3
over HTTP, the simulator over HTTP)."""

from __future__ import annotations

import json
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import AWS_ENV, make_image, many_runs_manifest, read_jsonl

from pipeline.cli.main import main
from pipeline.ledger import LedgerEntry, LineKind, ledger_text, parse_ledger
from pipeline.provider import WaveSpeedClient
from pipeline.report import finalize_job
from pipeline.state import State
from pipeline.storage import open_storage
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer

pytestmark = pytest.mark.timeout(300)


def total(lines: list[dict]) -> Decimal:
    return sum((Decimal(line["cost_usd"]) for line in lines), Decimal("0"))


def drops_manifest(directory: Path, output: str, sets: int) -> Path:
    """``sets`` × 2 runs; the first submit of every run of the first prompt loses its answer."""
    directory.mkdir(parents=True, exist_ok=True)
    make_image(directory / "p.png")
    set_lines = "".join(f"\n  - id: s{i:03d}\n    images: [p.png]\n    vars: {{product: item {i}}}" for i in range(sets))
    path = directory / "drops.yaml"
    path.write_text(
        f"version: 1\nname: drops\noutput: {output}\nimage_sets:{set_lines}\nprompts:\n"
        "  - id: lost\n    text: \"Studio shot of the {product} [sim:drop-once].\"\n"
        "  - id: plain\n    text: \"Outdoor shot of the {product}.\"\n"
        "output_key: \"{image_set}/{prompt}/{variant}\"\n"
    )
    return path


def start_job(settings, manifest: Path) -> str:
    return submit(prepare(manifest, settings), State.from_url(settings.redis_url), job_enqueuer(settings),
                  finalize=finalize_job)


def finish(settings, job_id: str, sim, timeout_s: float = 200):
    status = follow(State.from_url(settings.redis_url), job_id, lambda s: None, 0.2, timeout_s)
    assert status.done, f"job {job_id} did not finish in {timeout_s}s: {status}"
    deadline = time.monotonic() + 30  # a lost answer's prediction may still be running
    while sim.stats()["processing"] and time.monotonic() < deadline:
        time.sleep(0.1)
    return status


def cli_env(settings) -> dict[str, str]:
    return {**AWS_ENV, "S3_ENDPOINT_URL": settings.s3_endpoint_url, "WAVESPEED_BASE_URL": settings.base_url,
            "WAVESPEED_API_KEY": settings.require_api_key(), "REDIS_URL": settings.redis_url}


def editpipe(settings, *args: str) -> tuple[int, dict]:
    """``editpipe ARGS --json``: its exit code and what it printed."""
    result = CliRunner().invoke(main, [*args, "--json"], env=cli_env(settings), catch_exceptions=False)
    return result.exit_code, json.loads(result.output)


def test_settle_makes_the_ledger_equal_the_bill_and_leaves_other_jobs_predictions_alone(
    tmp_path, settings, sim, workers, bucket, s3
):
    root = f"s3://{bucket}/out"
    workers.start(count=1, concurrency=6)
    # Two jobs at once on one account and one output root: the other job's predictions fall in
    # this one's time window, and only its ledger says they are not this job's.
    job = start_job(settings, drops_manifest(tmp_path / "a", root, sets=15))
    other = start_job(settings, many_runs_manifest(tmp_path / "b", root, sets=6))
    status, other_status = finish(settings, job, sim), finish(settings, other, sim)
    stats = sim.stats()
    ledger = read_jsonl(s3, bucket, f"out/jobs/{job}/ledger.jsonl")
    other_ledger = read_jsonl(s3, bucket, f"out/jobs/{other}/ledger.jsonl")
    unconfirmed = [line for line in ledger if line["kind"] == "unconfirmed_submit"]
    known = {line["prediction_id"] for line in ledger + other_ledger}
    lost = [p for p in sim.predictions() if p["billed"] and p["id"] not in known]
    billed = Decimal(stats["billed_usd"])
    print(f"\nreconcile: {status.total} + {other_status.total} runs, {stats['dropped_responses']} dropped answers, "
          f"{len(unconfirmed)} unconfirmed lines, {len(lost)} billed predictions no ledger knows; "
          f"bill ${billed}, ledgers ${total(ledger)} + ${total(other_ledger)}")
    assert stats["dropped_responses"] == 15 and other_status.succeeded == 12
    # A lost answer is adopted unless another lost submit's window holds its prediction too (two
    # drops close together on a loaded machine): then the run fails, retryable, with an
    # unconfirmed line, and the settle below finds what was billed for it.
    failed = [line for line in read_jsonl(s3, bucket, f"out/jobs/{job}/results.jsonl") if line["status"] == "failed"]
    assert status.succeeded + len(failed) == 30 and len(failed) <= len(unconfirmed)
    assert all(line["error_kind"] == "lost_answer" and line["retryable"] for line in failed)
    assert all(p["run_key"] in {line["run_key"] for line in ledger} for p in lost)  # all this job's

    code, before = editpipe(settings, "ledger", "--output", root, "--job", job)
    [row] = before["jobs"]
    assert Decimal(row["unsettled_usd"]) == total(unconfirmed) and row["unsettled_lines"] == len(unconfirmed)
    assert Decimal(row["settled_usd"]) + Decimal(row["unsettled_usd"]) == total(ledger)

    code, found = editpipe(settings, "reconcile", job, "--output", root)
    kinds = Counter(d["kind"] for d in found["differences"])
    assert code == (1 if unconfirmed or lost else 0)
    assert kinds == Counter({"unconfirmed_submit": len(unconfirmed), "billed_unknown": len(lost)}) - Counter()
    assert {d["prediction_id"] for d in found["differences"] if d["kind"] == "billed_unknown"} == {p["id"] for p in lost}
    assert all(Decimal(d["billed_usd"]) == Decimal("0.10") for d in found["differences"] if d["billed_usd"])
    assert Decimal(found["ledger_usd"]) == total(ledger)
    assert Decimal(found["bill_usd"]) == billed - total(other_ledger)

    code, settled = editpipe(settings, "reconcile", job, "--output", root, "--settle")
    after = read_jsonl(s3, bucket, f"out/jobs/{job}/ledger.jsonl")
    assert code == 0 and settled["differences"] == [] and len(settled["settled"]["replaced"]) == len(unconfirmed)
    assert total(after) + total(other_ledger) == billed  # to the cent: the bill, every line settled
    assert Decimal(settled["ledger_usd"]) == Decimal(settled["bill_usd"]) == billed - total(other_ledger)
    assert not [line for line in after if line["kind"] == "unconfirmed_submit"]
    assert sorted(line["prediction_id"] for line in after if line["kind"] == "settled") == sorted(p["id"] for p in lost)
    assert [line for line in after if line["kind"] == "completed"] == [line for line in ledger
                                                                        if line["kind"] == "completed"]
    right_run = {p["id"]: p["run_key"] for p in lost}
    paired = sum(1 for line in after if line["kind"] == "settled" and right_run[line["prediction_id"]] == line["run_key"])
    print(f"settled: {len(settled['settled']['replaced'])} lines, {paired} booked to the run that made them, "
          f"{settled['settled']['by_order']} paired by order; job ledger ${total(after)}")

    text = s3.get_object(Bucket=bucket, Key=f"out/jobs/{job}/ledger.jsonl")["Body"].read()
    code, again = editpipe(settings, "reconcile", job, "--output", root, "--settle")
    assert code == 0 and again["settled"]["replaced"] == [] and again["differences"] == []
    assert s3.get_object(Bucket=bucket, Key=f"out/jobs/{job}/ledger.jsonl")["Body"].read() == text

    code, books = editpipe(settings, "ledger", "--output", root)
    rows = {r["job_id"]: r for r in books["jobs"]}
    assert Decimal(rows[job]["unsettled_usd"]) == 0 and Decimal(rows[job]["settled_usd"]) == total(after)
    assert Decimal(books["total_usd"]) == Decimal(books["settled_usd"]) == billed


def test_a_lost_submit_the_provider_never_created_settles_to_zero(tmp_path, settings, sim, workers, bucket, s3):
    root = f"s3://{bucket}/out"
    workers.start(count=1, concurrency=4)
    job = start_job(settings, many_runs_manifest(tmp_path, root, sets=3))
    finish(settings, job, sim)
    storage = open_storage(root, settings)
    key = f"jobs/{job}/ledger.jsonl"
    lines = parse_ledger(storage.get_text(key))
    # What a worker killed with its submit on the wire leaves when the request never reached
    # the provider: an estimate at full price, for a prediction that does not exist.
    never = LedgerEntry(prediction_id=None, run_key=lines[0].run_key, job_id=job, model=lines[0].model,
                        cost_usd=Decimal("0.10"), charged_at=lines[-1].charged_at, kind=LineKind.UNCONFIRMED_SUBMIT)
    storage.put_text(key, ledger_text([*lines, never]), "application/x-ndjson")

    code, found = editpipe(settings, "reconcile", job, "--output", root)
    assert code == 1 and [d["kind"] for d in found["differences"]] == ["unconfirmed_submit"]
    assert Decimal(found["ledger_usd"]) == Decimal(sim.stats()["billed_usd"]) + Decimal("0.10")

    code, settled = editpipe(settings, "reconcile", job, "--output", root, "--settle")
    [line] = settled["settled"]["replaced"]
    assert code == 0 and line["kind"] == "not_billed" and line["cost_usd"] == "0.00" and line["prediction_id"] is None
    assert total(read_jsonl(s3, bucket, f"out/{key}")) == Decimal(sim.stats()["billed_usd"])


def test_reconcile_lists_a_ledger_line_the_bill_does_not_have_and_an_amount_it_does_not_match(
    tmp_path, settings, sim, workers, bucket, s3
):
    root = f"s3://{bucket}/out"
    workers.start(count=1, concurrency=4)
    job = start_job(settings, many_runs_manifest(tmp_path, root, sets=2))
    finish(settings, job, sim)
    storage = open_storage(root, settings)
    key = f"jobs/{job}/ledger.jsonl"
    first, second, *rest = parse_ledger(storage.get_text(key))
    unknown = LedgerEntry(prediction_id="no-such-prediction", run_key=first.run_key, job_id=job, model=first.model,
                          cost_usd=Decimal("0.10"), charged_at=first.charged_at)
    dearer = LedgerEntry(**{**second.__dict__, "cost_usd": Decimal("0.15")})
    storage.put_text(key, ledger_text([first, dearer, *rest, unknown]), "application/x-ndjson")

    code, found = editpipe(settings, "reconcile", job, "--output", root)
    diffs = {(d["kind"], d["prediction_id"]): d for d in found["differences"]}
    assert code == 1
    assert diffs[("not_billed", "no-such-prediction")]["ledger_usd"] == "0.10"
    changed = diffs[("amount_differs", second.prediction_id)]
    assert (changed["ledger_usd"], changed["billed_usd"]) == ("0.15", "0.10")
    assert Decimal(found["bill_usd"]) == Decimal(sim.stats()["billed_usd"])
    assert Decimal(found["ledger_usd"]) == Decimal(sim.stats()["billed_usd"]) + Decimal("0.15")


def test_a_billed_prediction_beyond_the_jobs_lost_submits_is_listed_never_booked(
    tmp_path, settings, sim, workers, bucket, s3
):
    root = f"s3://{bucket}/out"
    workers.start(count=1, concurrency=4)
    job = start_job(settings, many_runs_manifest(tmp_path, root, sets=2))
    finish(settings, job, sim)
    key = f"out/jobs/{job}/ledger.jsonl"
    text = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    # Someone else's prediction of the same model, on the same account, just after the job.
    # Long enough to be still running through both reconciles below, on a loaded machine too.
    sim.configure(latency_s=12.0, jitter_s=0.0)
    with WaveSpeedClient(settings.base_url, settings.require_api_key()) as client:
        image = client.upload(tmp_path / "p.png")
        stranger = client.submit("/api/v3/openai/gpt-image-2/edit", {"images": [image], "prompt": "not editpipe's"})

    code, found = editpipe(settings, "reconcile", job, "--output", root)
    assert code == 1 and [(d["kind"], d["prediction_id"]) for d in found["differences"]] == [
        ("still_running", stranger.id)]
    refused = CliRunner().invoke(main, ["reconcile", job, "--output", root, "--settle"], env=cli_env(settings))
    assert refused.exit_code == 1 and "still running" in refused.output
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == text

    finish(settings, job, sim)
    code, settled = editpipe(settings, "reconcile", job, "--output", root, "--settle")
    assert code == 1 and settled["settled"]["replaced"] == [] and settled["settled"]["unbooked"] == [stranger.id]
    assert [(d["kind"], d["billed_usd"]) for d in settled["differences"]] == [("billed_unknown", "0.10")]
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == text


def test_with_a_tenth_of_submit_answers_dropped_the_settled_ledger_is_the_bill_to_the_cent(
    tmp_path, settings, sim, workers, bucket, s3
):
    root = f"s3://{bucket}/out"
    sim.configure(drop_rate=0.1, seed=11)  # a resubmit may lose its answer too
    workers.start(count=1, concurrency=6)
    job = start_job(settings, many_runs_manifest(tmp_path, root, sets=60))
    status = finish(settings, job, sim)
    stats = sim.stats()
    ledger = read_jsonl(s3, bucket, f"out/jobs/{job}/ledger.jsonl")

    code, settled = editpipe(settings, "reconcile", job, "--output", root, "--settle")
    after = read_jsonl(s3, bucket, f"out/jobs/{job}/ledger.jsonl")
    kinds = Counter(line["kind"] for line in after)
    print(f"\n10% dropped: {status.total} runs, {status.succeeded} succeeded, {stats['dropped_responses']} dropped "
          f"answers, billed {stats['billed_count']} = ${stats['billed_usd']}; ledger ${total(ledger)} before settle, "
          f"${total(after)} after ({dict(kinds)})")
    assert stats["dropped_responses"] > 0  # (with lost answers adopted at run time, fewer lines to settle)
    assert code == 0 and settled["differences"] == []
    assert total(after) == Decimal(stats["billed_usd"]) and "unconfirmed_submit" not in kinds
