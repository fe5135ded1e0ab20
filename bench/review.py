"""What the review page's server costs for a big job: its cards read, the poll, a decision.

A finished job of ``--runs`` runs (default 5,000) is made in a private Redis and a local
output root, without workers: its planned runs and their results in Redis, its
``results.jsonl`` in storage, and half its runs decided in ``review.jsonl``. The page's
server (``review_server.ReviewServer``) is started over it, once with Redis (as ``editpipe
review JOB`` with ``REDIS_URL``) and once from storage alone (a job of ``editpipe run``),
and asked what a page asks:

- the first ``GET api/state`` (the cards read and the JSON made), its size;
- a poll of it that finds nothing changed (``If-None-Match``: 304), the median of 20;
- ``POST api/decisions`` approving 500 runs at once, then the poll that brings it.

    .venv/bin/python bench/review.py [--runs 5000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench._common import machine  # noqa: E402
from pipeline.embedded import private_redis  # noqa: E402
from pipeline.layout import job_file  # noqa: E402
from pipeline.ledger import utc_now  # noqa: E402
from pipeline.plan import InputRef, Run  # noqa: E402
from pipeline.records import RunResult, RunStatus  # noqa: E402
from pipeline.review import Decision, append_decisions  # noqa: E402
from pipeline.review_server import ReviewApp, ReviewServer  # noqa: E402
from pipeline.state import State  # noqa: E402
from pipeline.storage import LocalStorage  # noqa: E402

JOB = "bench-review-20261203T000000Z-000000"


def make_job(state: State, storage: LocalStorage, runs: int) -> list[str]:
    ref = InputRef("/tmp/p.png", "local", "sha256:" + "0" * 64)
    planned = [Run(index=i, run_key=f"{i:064x}", image_set=f"s{i // 4:05d}", prompt_id="editorial",
                   variant=1, model="openai/gpt-image-2/edit", prompt=f"A model wearing item {i // 4}, warm light.",
                   options={"aspect_ratio": ("2:3", "3:2")[i % 2], "output_format": "png"}, inputs=(ref,),
                   output_key=f"s{i // 4:05d}/editorial/{i}.png", vars={}) for i in range(runs)]
    state.jobs.create(JOB, name="bench-review", output=storage.root, runs=planned, total=runs, estimated_usd=0,
                      budget_usd=None, created_at=utc_now())
    lines = []
    for run in planned:
        result = RunResult.of(run, RunStatus.SUCCEEDED, output=run.output_key, prediction_id=f"p{run.index}",
                              checks={"aspect_ratio": {"passed": True, "detail": "171x256 is 2:3 (within 3%)"},
                                      "not_nsfw": {"passed": run.index % 7 != 0, "detail": "flagged"}})
        state.runs.finish_run(JOB, run.index, outcome="succeeded", result=result.to_dict())
        lines.append(json.dumps(result.public()))
    storage.put_text(job_file(JOB, "results.jsonl"), "\n".join(lines) + "\n")
    state.jobs.set_final(JOB, "succeeded", utc_now())
    append_decisions(storage, JOB, [Decision(run.run_key, run.index, "approve", "", "bench@here")
                                    for run in planned[: runs // 2]])
    return [run.run_key for run in planned]


def measure(label: str, server: ReviewServer, keys: list[str]) -> None:
    url = server.url
    started = time.perf_counter()
    first = httpx.get(url + "api/state", timeout=120)
    cold = time.perf_counter() - started
    etag = first.headers["ETag"]
    polls = []
    for _ in range(20):
        started = time.perf_counter()
        answer = httpx.get(url + "api/state", headers={"If-None-Match": etag}, timeout=60)
        polls.append(time.perf_counter() - started)
        assert answer.status_code == 304, answer.status_code
    token = httpx.get(url).text.split('name="csrf-token" content="', 1)[1].split('"', 1)[0]
    chosen = keys[len(keys) // 2: len(keys) // 2 + 500]
    started = time.perf_counter()
    decided = httpx.post(url + "api/decisions", json={"run_keys": chosen, "decision": "approve"},
                         headers={"Origin": url.rstrip("/"), "X-CSRF-Token": token}, timeout=120)
    decide = time.perf_counter() - started
    assert decided.status_code == 200, decided.text
    started = time.perf_counter()
    after = httpx.get(url + "api/state", headers={"If-None-Match": etag}, timeout=120)
    changed = time.perf_counter() - started
    assert after.status_code == 200 and len(after.json()["decisions"]) == len(keys) // 2 + 500
    print(f"{label}: first api/state {cold:.2f} s ({len(first.content) / 1e6:.1f} MB, {len(keys):,} cards); "
          f"unchanged poll (304) median {statistics.median(polls) * 1000:.0f} ms; "
          f"500 approvals {decide * 1000:.0f} ms; the poll after them {changed * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="bench-review-") as work:
        (Path(work) / "redis").mkdir()
        with private_redis(Path(work) / "redis") as url:
            run(url, Path(work), args.runs)


def run(url: str, work: Path, runs: int) -> None:
    state = State.from_url(url)
    storage = LocalStorage(work / "root")
    started = time.perf_counter()
    keys = make_job(state, storage, runs)
    print(f"job of {runs:,} runs made in {time.perf_counter() - started:.1f} s")
    with ReviewServer(ReviewApp(storage, JOB, reviewer="bench@redis", state=state)) as server:
        measure("with Redis", server, keys)
    with ReviewServer(ReviewApp(storage, JOB, reviewer="bench@storage")) as server:
        measure("storage alone", server, keys)


if __name__ == "__main__":
    main()
