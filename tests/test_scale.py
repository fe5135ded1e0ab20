"""Large jobs in bounded memory: blueprints, Redis bytes per queued run, streaming checks of
output keys, the index looked up without a set of keys, results and report paged.

Against a real redis-server (its ``INFO memory`` and ``MEMORY USAGE``), moto's S3 server and
local folders, as the rest of the suite.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import pytest

from conftest import make_image, write_yaml
from pipeline.blueprint import Blueprint, set_chunk
from pipeline.errors import ManifestError
from pipeline.ledger import utc_now
from pipeline.manifest import load_manifest
from pipeline.plan import Plan, plan_runs
from pipeline.report import finalize_job
from pipeline.run_index import index_line, job_key
from pipeline.state import State
from pipeline.storage import LocalStorage
from pipeline.submission import look_up_done


def _feed_manifest(directory: Path, rows: int, prompts: int = 10, output_key: str | None = None,
                   extra: str = "") -> Path:
    make_image(directory / "backdrop.png")
    lines = ["sku,image_url,backdrop,title"] + [f"sku-{i:05d},https://cdn.example.com/{i}.jpg,backdrop.png,item {i}"
                                                for i in range(rows)]
    (directory / "feed.csv").write_text("\n".join(lines) + "\n")
    prompt_lines = "".join(f"  - id: p{j}\n    text: Photo {j} of {{title}}.\n" for j in range(prompts))
    key = f'output_key: "{output_key}"\n' if output_key else ""
    return write_yaml(directory, f"version: 1\nname: big\noutput: out\n{extra}"
                      "catalog:\n  feed: feed.csv\n  id: sku\n  images: [image_url, backdrop]\n  vars: [title]\n"
                      f"prompts:\n{prompt_lines}{key}", name="big.yaml")


def _stored(blueprint: Blueprint) -> Blueprint:
    """The blueprint as a worker reads it back: its head and its set chunks, parsed."""
    chunks = {n: set_chunk(text) for n, text in blueprint.set_chunks(per_chunk=7)}
    return Blueprint.from_head(blueprint.head(), lambda pos: chunks[pos // 7][pos % 7])


def test_a_stored_blueprint_builds_every_run_the_plan_builds(tmp_path, specs):
    listed = write_yaml(tmp_path, """
        version: 1
        name: listed
        output: out
        defaults: {variants: 2}
        image_sets:
          - {id: a, images: [https://x.example/a.jpg], vars: {product: ring}}
          - {id: b, images: [https://x.example/b.jpg, https://x.example/b2.jpg], vars: {product: hoop}}
        prompts:
          - {id: p1, text: "A {product} {{literal}}", aspect_ratio: "1:1"}
          - {id: p2, text: "Flat {product}"}
        matrix: {aspect_ratio: ["2:3", "3:2"], quality: [low, high]}
        runs:
          - {image_set: b, prompt: p2, quality: high}
          - {image_set: a, prompt: p1}
          - {image_set: a, prompt: p2, variants: 3}
          - {image_set: b, prompt: p1}
        output_key: "{image_set}/{prompt}/{aspect_ratio}/{quality}/{variant}"
    """, name="listed.yaml")
    for path in (listed, _feed_manifest(tmp_path, 30, prompts=3)):
        plan = plan_runs(load_manifest(path, specs), specs)
        runs = list(plan.runs)
        stored = _stored(plan.blueprint)
        assert [run.to_dict() for run in stored] == [run.to_dict() for run in runs]
        assert [stored.run(i).to_dict() for i in reversed(range(len(runs)))] == [r.to_dict() for r in reversed(runs)]
        assert list(plan.keys_and_outputs()) == [(r.run_key, r.output_key) for r in runs]
        assert list(stored.prices(specs)) == [specs[r.model].price_for(r.options) for r in runs]
        assert plan.runs[-1] == runs[-1] and plan.runs[1:3] == runs[1:3]
        with pytest.raises(IndexError):
            stored.run(len(runs))


def test_a_queued_run_costs_redis_under_300_bytes_and_a_worker_rebuilds_it(tmp_path, specs, state, r, settings):
    plan = plan_runs(load_manifest(_feed_manifest(tmp_path, 2_000), specs), specs)
    assert len(plan.runs) == 20_000
    job_id = f"big-{time.time_ns()}"
    before = int(r.info("memory")["used_memory"])
    state.jobs.create(job_id, name="big", output=str(tmp_path / "out"), runs=plan.runs, total=len(plan.runs),
                      estimated_usd=Decimal("2000"), budget_usd=None, created_at=utc_now())
    added = int(r.info("memory")["used_memory"]) - before
    held = state.jobs.memory(job_id)

    assert added / len(plan.runs) <= 300 and held / len(plan.runs) <= 300, (added, held)
    assert not r.exists(f"ep:job:{job_id}:runs")  # no JSON per run
    assert state.runs.planned_count(job_id) == len(plan.runs)
    # Another process (a worker) rebuilds any run from what Redis holds.
    worker = State.from_url(settings.redis_url or "")
    for index in (0, 9, 10, 12_345, 19_999):
        assert worker.runs.run(job_id, index).to_dict() == plan.runs[index].to_dict()
    claim = worker.runs.claim_start(job_id, 777, "token", 30)
    assert claim.state == "claimed" and claim.run == plan.runs[777]
    worker.runs.load([(job_id, i) for i in range(5_000, 5_100)])
    assert [worker.runs.run(job_id, i) for i in range(5_000, 5_100)] == plan.runs[5_000:5_100]


def test_runs_outside_a_blueprint_are_kept_one_by_one(tmp_path, specs, state):
    plan = plan_runs(load_manifest(_feed_manifest(tmp_path, 3, prompts=2), specs), specs)
    listed = list(plan.runs)
    job_id = f"listed-{time.time_ns()}"
    state.jobs.create(job_id, name="listed", output=str(tmp_path / "out"), runs=listed, total=len(listed),
                      estimated_usd=Decimal("0.60"), budget_usd=None, created_at=utc_now())
    assert [state.runs.run(job_id, i) for i in range(len(listed))] == listed
    assert sorted(state.runs.planned(job_id), key=lambda run: run.index) == listed


def test_repeated_output_keys_are_found_by_the_streaming_pass(tmp_path, specs):
    # 20,000 runs whose keys are not distinct by their shape (no {prompt}): every pair of
    # prompts p0 and p1... collides, each reported (the first 20, then how many more).
    path = _feed_manifest(tmp_path, 2_000, prompts=10, output_key="{image_set}/x{variant}")
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, specs)
    messages = [issue.message for issue in caught.value.issues]
    assert len(messages) == 21 and all("is the output of two runs" in m for m in messages[:20])
    assert "'sku-00000/x1' is the output of two runs" in messages[0]
    assert messages[-1] == "and 17980 more runs with an unsafe or shared output key"
    # One collision among 20,000 keys that the shape cannot vouch for: exactly it is reported.
    path = _feed_manifest(tmp_path / "one", 2_000, prompts=10, output_key="{title}/{prompt}/{variant}")
    feed = (tmp_path / "one" / "feed.csv")
    feed.write_text(feed.read_text().replace("item 1999\n", "item 7\n"))
    with pytest.raises(ManifestError) as caught:
        load_manifest(path, specs)
    messages = [issue.message for issue in caught.value.issues]
    assert len(messages) == 10 and all(m.startswith("'item 7/p") for m in messages), messages


def test_the_index_is_looked_up_without_a_set_of_keys(tmp_path, specs):
    plan = plan_runs(load_manifest(_feed_manifest(tmp_path, 500, prompts=4), specs), specs)
    runs = list(plan.runs)
    storage = LocalStorage(tmp_path / "out")
    lines = [index_line(r.run_key, r.output_key) for r in runs[:1_000]]  # made here, unchanged
    lines.append(index_line(runs[1_000].run_key, "elsewhere/made.png"))  # same run, another key
    lines.append(index_line("f" * 64, runs[1_001].output_key))  # its output key, another run: changed
    lines.append(index_line(runs[0].run_key, "later/duplicate.png"))  # a second line: the first counts
    storage.put_text(job_key("old-20261201T000000Z-abcdef"), "\n".join(lines) + "\n")

    done, changes = look_up_done(storage, plan)
    assert (changes.unchanged, changes.changed, changes.new) == (1_001, 1, 998)
    assert done.output_of(runs[0]) == runs[0].output_key and done.output_of(runs[1_000]) == "elsewhere/made.png"
    assert done.output_of(runs[1_001]) is None and len(done) == 1_001
    assert dict(done) == {**{r.run_key: r.output_key for r in runs[:1_000]}, runs[1_000].run_key: "elsewhere/made.png"}
    assert plan.cost_where(specs, done.done_at) == Decimal("0.10") * 999

    forced, changes = look_up_done(storage, plan, force=True)
    assert len(forced) == 0 and (changes.unchanged, changes.changed) == (0, 1_001)
    assert look_up_done(storage, Plan("listed", runs))[1] == look_up_done(storage, plan)[1]


def test_a_large_jobs_results_and_report_are_written_page_by_page(tmp_path, specs, state):
    plan = plan_runs(load_manifest(_feed_manifest(tmp_path, 250, prompts=10), specs), specs)
    storage = LocalStorage(tmp_path / "out")
    job_id = f"big-{time.time_ns()}"
    state.jobs.create(job_id, name="big", output=storage.root, runs=plan.runs, total=len(plan.runs),
                      estimated_usd=Decimal("250"), budget_usd=None, created_at=utc_now())
    for run in reversed(list(plan.runs)):  # finished in any order; written in index order
        failed = run.index % 500 == 3
        state.runs.finish_run(job_id, run.index, outcome="failed" if failed else "succeeded", result={
            "index": run.index, "run_key": run.run_key, "image_set": run.image_set, "prompt": run.prompt_id,
            "variant": 1, "options": run.options, "status": "failed" if failed else "succeeded",
            "output": None if failed else run.output_key, "prediction_id": None if failed else f"pred-{run.index}",
            "cost_usd": "0" if failed else "0.10", "error": "moderated" if failed else None})

    finalize_job(state, storage, job_id, page_size=400)

    results = [json.loads(line) for line in storage.get_text(f"jobs/{job_id}/results.jsonl").splitlines()]
    assert [line["run_key"] for line in results] == list(plan.keys())
    pages = sorted(key for key in storage.list_keys(f"jobs/{job_id}/") if key.endswith(".html"))
    assert len(pages) == 7  # 2,500 runs, 400 a page
    last = storage.get_text(f"jobs/{job_id}/report-7.html")
    assert last.count('<article class="run') == 100 and "runs 2401–2500 of 2500" in last
    first = storage.get_text(f"jobs/{job_id}/report.html")
    assert first.count('<article class="run') == 400 and "Failed runs (5)" in first
    assert "report-6.html#run-2004" in first  # a failure links to its page (index 2003: page 6)
    summary = json.loads(storage.get_text(f"jobs/{job_id}/summary.json"))
    assert summary["pages"] == 7 and len(summary["failures"]) == 5
    index = storage.get_text(job_key(job_id)).splitlines()
    assert len(index) == 2_495


def test_an_unchanged_plan_submitted_again_is_skipped_whole_at_no_cost(tmp_path, specs, state, settings):
    from pipeline.submission import prepare, submit

    path = _feed_manifest(tmp_path, 200, prompts=10)
    first = prepare(path, settings, state=state)
    storage = first.storage
    storage.put_text(job_key("made-20261201T000000Z-abcdef"),
                     "".join(index_line(k, o) + "\n" for k, o in first.plan.keys_and_outputs()))

    again = prepare(path, settings, state=state)
    assert again.estimated_usd == 0 and again.changes.unchanged == 2_000 and again.new_runs == 0
    sent: list[str] = []
    job_id = submit(again, state, sent.append, finalize=finalize_job)

    status = state.jobs.status(job_id)
    assert not sent and status.status == "succeeded" and status.skipped == 2_000 and status.spent_usd == 0
    lines = storage.get_text(f"jobs/{job_id}/results.jsonl").splitlines()
    assert len(lines) == 2_000 and all(json.loads(line)["status"] == "skipped" for line in lines)
