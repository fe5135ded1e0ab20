"""Lost submit answers found among the account's recent predictions, not paid again.

A submit whose answer was lost (the connection dropped after the provider made the
prediction, or the worker died with it on the wire) is looked for in the provider's list
(``pipeline.adoption``): adopted when it is the one unknown prediction in its window that no
other submit could have made; submitted again only when the provider made nothing. Money is
proven by what the simulator saw: which predictions it made for which run key, and which it
billed.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import pytest
from PIL import Image

from conftest import many_runs_manifest, read_jsonl, run_job
from pipeline.adoption import LOOKS_AT_S, settle_by_callback
from pipeline.errors import SubmitUnconfirmed
from pipeline.execution import Context, Next, collect, poll_run, prepare_inputs, request_payload, start_run
from pipeline.execution import start_claim_s
from pipeline.layout import sidecar_key
from pipeline.report import finalize_job
from pipeline.settings import Settings
from pipeline.state import flush
from pipeline.submission import prepare, submit

pytestmark = pytest.mark.timeout(300)


def ledger_total(lines: list[dict]) -> Decimal:
    return sum((Decimal(line["cost_usd"]) for line in lines), Decimal("0"))


def manifest_of(tmp_path: Path, bucket: str, prompts: list[str], name: str = "lost") -> Path:
    """One image, one run per prompt, each with its own output key."""
    image = tmp_path / "img.png"
    Image.new("RGB", (32, 32), (40, 120, 200)).save(image)
    lines = "".join(f"\n  - id: p{n}\n    text: \"{text}\"" for n, text in enumerate(prompts))
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"version: 1\nname: {name}\noutput: s3://{bucket}/{name}\nimage_sets:\n  - id: s\n"
                    f"    images: [img.png]\nprompts:{lines}\noutput_key: \"{{prompt}}\"\n")
    return path


def new_job(tmp_path: Path, settings: Settings, ctx: Context, bucket: str, prompts: list[str]) -> str:
    """A recorded job no worker takes: the test runs its steps."""
    return submit(prepare(manifest_of(tmp_path, bucket, prompts), settings), ctx.state, lambda job_id: None,
                  finalize=finalize_job)


def drive(ctx: Context, job_id: str, index: int, step: Next | None = None, timeout_s: float = 120) -> Next:
    """Carry a run's steps out as the workers would, until it is done."""
    deadline = time.monotonic() + timeout_s
    step = step or start_run(ctx, job_id, index, token=uuid.uuid4().hex)
    while step.action not in ("done", "finalize"):
        assert time.monotonic() < deadline, f"run {index} did not finish: {step}"
        if step.action in ("submit", "wait"):
            time.sleep(step.delay_s)
            step = start_run(ctx, job_id, index, token=uuid.uuid4().hex, failures=step.failures)
        elif step.action == "poll":
            time.sleep(0.2)
            step = poll_run(ctx, job_id, index)
        else:
            step = collect(ctx, job_id, index, step.prediction)
    return step


def send_and_die(ctx: Context, job_id: str, index: int) -> str | None:
    """What a worker does up to its submit's answer, and then dies (its claim lapses): the
    prediction id the provider answered, which nobody recorded (None: the answer was lost)."""
    claim = ctx.state.runs.claim_start(job_id, index, "dying", start_claim_s(ctx.settings))
    run = claim.run
    spec = ctx.specs[run.model]
    ctx.state.budget.reserve(job_id, index, spec.price_for(run.options), day=time.strftime("%Y-%m-%d", time.gmtime()), day_cap=None)
    attempt = ctx.state.runs.begin_submit(job_id, index, "dying")
    ctx.state.lost.on_wire(job_id, index, attempt, run.model, start_claim_s(ctx.settings) + 10)
    try:
        answered = ctx.client.submit(spec.endpoint, request_payload(run, prepare_inputs(ctx, run)),
                                     run_key=run.run_key)
    except SubmitUnconfirmed:
        answered = None
    ctx.state.runs.release_claim(job_id, index, "dying")  # the claim lapses with its worker
    return answered.id if answered else None


def made_for(sim) -> dict[str, list[dict]]:
    """The simulator's predictions by the run key they were made for."""
    by_key: dict[str, list[dict]] = {}
    for p in sim.predictions():
        by_key.setdefault(p["run_key"], []).append(p)
    return by_key


@pytest.fixture
def ctx(settings: Settings) -> Context:
    flush(settings.redis_url or "")
    return Context.from_settings(settings)


def test_a_dropped_answer_is_adopted_from_the_list_and_charged_once(tmp_path, settings, sim, workers, bucket, s3):
    prompts = ["[sim:drop-once] A ring on slate.", "A ring on linen.", "A ring on oak."]
    workers.start(count=1, concurrency=4)

    status = run_job(settings, manifest_of(tmp_path, bucket, prompts), timeout_s=120)

    stats = sim.stats()
    results = read_jsonl(s3, bucket, f"lost/jobs/{status.id}/results.jsonl")
    ledger = read_jsonl(s3, bucket, f"lost/jobs/{status.id}/ledger.jsonl")
    print(f"\ndrop-once: {status.succeeded}/{status.total} succeeded, dropped {stats['dropped_responses']}, "
          f"billed {stats['billed_count']}, duplicates {stats['duplicate_submissions']}, "
          f"ledger ${ledger_total(ledger)} ({len(ledger)} lines)")
    assert status.status == "succeeded" and stats["dropped_responses"] == 1
    assert stats["billed_count"] == 3 and stats["duplicate_submissions"] == 0
    assert [line["kind"] for line in ledger] == ["completed"] * 3
    assert ledger_total(ledger) == Decimal(stats["billed_usd"])
    made = made_for(sim)
    for result in results:  # each run's output is the prediction made for its own run key
        [own] = made[result["run_key"]]
        assert result["prediction_id"] == own["id"]
    dropped = next(r for r in results if r["output"].startswith("p0"))
    sidecar = json.loads(s3.get_object(Bucket=bucket, Key=f"lost/{sidecar_key(dropped['output'])}")["Body"].read())
    assert sidecar["prediction_id"] == made[dropped["run_key"]][0]["id"]


def test_two_overlapping_lost_answers_are_never_swapped(tmp_path, settings, sim, ctx, bucket, s3):
    # Two workers die with their submits on the wire, seconds apart: both windows (from the
    # send to the deadline) hold both predictions, and nothing tells which is whose.
    job_id = new_job(tmp_path, settings, ctx, bucket, ["A ring on slate.", "A ring on linen."])
    made = [send_and_die(ctx, job_id, 0), send_and_die(ctx, job_id, 1)]
    assert None not in made

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:  # two workers, each with one of them
        ends = sorted(pool.map(lambda index: drive(ctx, job_id, index), (0, 1)), key=lambda n: n.action)

    results = ctx.state.runs.results(job_id)
    ledger = ctx.state.runs.ledger(job_id)
    stats = sim.stats()
    print(f"\noverlapping: {[r['status'] for r in results]} after {time.monotonic() - started:.0f}s, "
          f"ledger {[line['kind'] for line in ledger]}, billed {stats['billed_count']}, created {stats['created']}")
    assert ends[-1].action == "finalize"
    # Not guessed: neither run got a prediction; each is booked as possibly paid, for a
    # person to resume, and nothing was submitted again.
    assert [r["status"] for r in results] == ["failed", "failed"]
    assert all("lost with its worker" in r["error"] and r["retryable"] for r in results)
    assert sorted(line["kind"] for line in ledger) == ["unconfirmed_submit"] * 2
    assert stats["created"] == 2 and stats["duplicate_submissions"] == 0
    # Resumed, each run is paid once more and gets the output made for its own run key.
    for index in (0, 1):
        assert ctx.state.runs.reopen(job_id, index)
        ctx.state.runs.forget_attempts(job_id, index)
        drive(ctx, job_id, index)
    by_key = made_for(sim)
    for result in ctx.state.runs.results(job_id):
        assert result["status"] == "succeeded"
        own = [p["id"] for p in by_key[result["run_key"]]]
        assert result["prediction_id"] in own and result["prediction_id"] not in made


def test_a_lost_answer_is_never_given_a_prediction_another_submit_may_have_made(tmp_path, settings, sim, ctx, bucket):
    # Run 0's worker dies with its submit on the wire, the provider having made nothing; run
    # 1's submit is answered but its worker has not recorded the id yet. The one unknown
    # prediction in run 0's window is run 1's: never taken. Once nothing is found, run 0 is
    # submitted again and paid once.
    job_id = new_job(tmp_path, settings, ctx, bucket, ["[sim:drop-uncreated-once] A ring on slate.",
                                                       "A ring on linen."])
    assert send_and_die(ctx, job_id, 0) is None
    unrecorded = send_and_die(ctx, job_id, 1)

    step = start_run(ctx, job_id, 0, token="look-1")
    assert step.action == "submit" and ctx.state.runs.prediction_of(job_id, 0) is None  # looks again later
    ctx.state.lost.answered(job_id, 1, unrecorded, None)  # run 1's worker records its answer
    started = time.monotonic()
    drive(ctx, job_id, 0, step)
    waited = time.monotonic() - started
    drive(ctx, job_id, 1)

    stats = sim.stats()
    results = ctx.state.runs.results(job_id)
    ledger = ctx.state.runs.ledger(job_id)
    print(f"\nnothing made: resubmitted after {waited:.0f}s, billed {stats['billed_count']}, "
          f"ledger {[line['kind'] for line in ledger]}")
    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    assert results[1]["prediction_id"] == unrecorded and results[0]["prediction_id"] != unrecorded
    by_key = made_for(sim)
    assert [p["id"] for p in by_key[results[0]["run_key"]]] == [results[0]["prediction_id"]]
    assert stats["billed_count"] == 2 and stats["duplicate_submissions"] == 0
    assert [line["kind"] for line in ledger] == ["completed"] * 2
    assert waited >= LOOKS_AT_S[-1] - LOOKS_AT_S[0] - 1  # the bounded wait for a lagging list


def test_a_5xx_answer_for_a_prediction_the_provider_made_is_adopted_not_paid_again(
    tmp_path, settings, sim, workers, bucket, s3
):
    # The provider made the prediction and answered 500 without its id: as it asks, editpipe
    # looks for it before submitting again (a plain 5xx that made nothing is resubmitted after
    # the looks, as a dropped answer whose provider made nothing is, below).
    workers.start(count=1, concurrency=4)
    prompts = ["[sim:500-after-create-once] A ring on slate.", "A ring on linen."]

    status = run_job(settings, manifest_of(tmp_path, bucket, prompts), timeout_s=120)

    stats = sim.stats()
    ledger = read_jsonl(s3, bucket, f"lost/jobs/{status.id}/ledger.jsonl")
    results = read_jsonl(s3, bucket, f"lost/jobs/{status.id}/results.jsonl")
    assert status.status == "succeeded" and stats["injected_5xx"] == 1
    assert stats["created"] == 2 and stats["billed_count"] == 2 and stats["duplicate_submissions"] == 0
    assert [line["kind"] for line in ledger] == ["completed"] * 2
    made = made_for(sim)
    # Each run's one prediction is the one the provider made for its run key.
    assert all([p["id"] for p in made[r["run_key"]]] == [r["prediction_id"]] for r in results)


def test_a_dropped_answer_whose_provider_made_nothing_is_submitted_again_and_paid_once(
    tmp_path, settings, sim, workers, bucket, s3
):
    workers.start(count=1, concurrency=4)
    prompts = ["[sim:drop-uncreated-once] A ring on slate.", "A ring on linen."]

    status = run_job(settings, manifest_of(tmp_path, bucket, prompts), timeout_s=120)

    stats = sim.stats()
    ledger = read_jsonl(s3, bucket, f"lost/jobs/{status.id}/ledger.jsonl")
    assert status.status == "succeeded" and stats["dropped_responses"] == 1
    assert stats["created"] == 2 and stats["billed_count"] == 2 and stats["duplicate_submissions"] == 0
    assert [line["kind"] for line in ledger] == ["completed"] * 2


def test_a_callback_naming_a_run_that_is_looking_settles_it(tmp_path, settings, sim, ctx, bucket):
    job_id = new_job(tmp_path, settings, ctx, bucket, ["[sim:drop-once] A ring.", "A ring on oak."])
    assert start_run(ctx, job_id, 1, token="t1").action == "poll"
    answered_1 = ctx.state.runs.prediction_of(job_id, 1)
    step = start_run(ctx, job_id, 0, token="t0")  # the answer is dropped: it looks later
    assert step.action == "submit"
    [made_0] = [p["id"] for p in sim.predictions() if p["id"] != answered_1]

    assert not settle_by_callback(ctx.state, job_id, 0, answered_1)  # run 1 knows that one
    assert settle_by_callback(ctx.state, job_id, 0, made_0)
    assert not settle_by_callback(ctx.state, job_id, 0, made_0)  # settled once
    assert not settle_by_callback(ctx.state, job_id, 1, made_0)  # run 1 is not looking
    drive(ctx, job_id, 0, step)
    drive(ctx, job_id, 1)

    results = ctx.state.runs.results(job_id)
    assert [r["prediction_id"] for r in results] == [made_0, answered_1]
    assert sim.stats()["billed_count"] == 2 and sim.stats()["duplicate_submissions"] == 0


def test_with_a_tenth_of_answers_dropped_few_are_paid_twice(tmp_path, settings, sim, workers, bucket, s3):
    sim.configure(drop_rate=0.1, seed=11)
    workers.start(count=1, concurrency=6)

    status = run_job(settings, many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=50), timeout_s=240)

    stats = sim.stats()
    results = read_jsonl(s3, bucket, f"out/jobs/{status.id}/results.jsonl")
    ledger = read_jsonl(s3, bucket, f"out/jobs/{status.id}/ledger.jsonl")
    billed = [p for p in sim.predictions() if p["billed"]]
    paid_twice = sum(n - 1 for n in Counter(p["run_key"] for p in billed).values())
    unconfirmed = [line for line in ledger if line["kind"] == "unconfirmed_submit"]
    print(f"\ndrop_rate 0.1: {status.total} runs, {status.succeeded} succeeded, {status.failed} failed, "
          f"dropped {stats['dropped_responses']}, billed {stats['billed_count']} = ${stats['billed_usd']}, "
          f"paid twice {paid_twice}, unconfirmed {len(unconfirmed)}, ledger ${ledger_total(ledger)}")
    assert stats["dropped_responses"] >= 5
    assert paid_twice * 10 <= stats["dropped_responses"]
    assert ledger_total(ledger) == Decimal(stats["billed_usd"])  # every billed prediction booked once
    made = {p["id"]: p["run_key"] for p in sim.predictions()}
    for result in results:  # never another run's output
        if result["status"] == "succeeded":
            assert made[result["prediction_id"]] == result["run_key"]
    assert status.succeeded + len(unconfirmed) == status.total


def test_a_submit_whose_worker_died_on_the_wire_is_adopted_not_paid_again(tmp_path, settings, sim, ctx, bucket):
    job_id = new_job(tmp_path, settings, ctx, bucket, ["A ring on slate."])
    made = send_and_die(ctx, job_id, 0)

    assert drive(ctx, job_id, 0).action == "finalize"

    [result] = ctx.state.runs.results(job_id)
    assert result["status"] == "succeeded" and result["prediction_id"] == made
    assert [line["kind"] for line in ctx.state.runs.ledger(job_id)] == ["completed"]
    assert sim.stats()["created"] == 1 and sim.stats()["billed_count"] == 1


def test_a_prediction_no_run_made_in_the_window_stops_the_adoption(tmp_path, settings, sim, ctx, bucket):
    # Someone else on the account (the website, another editpipe) makes a prediction while
    # run 0's submit is lost with its worker: two unknown predictions in its window, and
    # nothing says which is its own. It takes neither.
    job_id = new_job(tmp_path, settings, ctx, bucket, ["A ring on slate."])
    made = send_and_die(ctx, job_id, 0)
    spec = ctx.specs[ctx.state.runs.run(job_id, 0).model]
    image = ctx.client.upload(tmp_path / "img.png")
    foreign = ctx.client.submit(spec.endpoint, {"images": [image], "prompt": "someone else's edit"}).id

    drive(ctx, job_id, 0)

    [result] = ctx.state.runs.results(job_id)
    assert result["status"] == "failed" and result["prediction_id"] is None
    assert [line["kind"] for line in ctx.state.runs.ledger(job_id)] == ["unconfirmed_submit"]
    assert {made, foreign} <= {p["id"] for p in sim.predictions()} and sim.stats()["created"] == 2
