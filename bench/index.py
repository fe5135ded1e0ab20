"""What finding the outputs already stored costs a plan, with and without jobs Redis lost.

A root of 100,000 outputs (each with its sidecar) is planned again with the manifest that
made them, as ``editpipe submit`` plans (``submission.look_up_done`` with the workers'
Redis), in three states of its run index:

- ``no open job``: every output indexed (one segment, as a finished job leaves it). The one
  extra request a plan makes for lost jobs is the listing of ``_index/open/`` (empty).
- ``lost, last 1,000 unindexed``: the job that made them was lost with its Redis after
  writing 99,000 lines in batches (as its index is written while it runs: every 500 lines,
  or once the oldest has waited 5 s); its open mark is there, Redis does not know it. The
  plan reads the sidecar of each run not indexed (1,000 GETs), indexes what it found and,
  having the lost job's very runs, closes its mark: the plan after it costs as before.
- ``lost, half done``: a lost job that made 50,000 of the 100,000 outputs, all indexed but
  the plan cannot know the rest were never made: 50,000 GETs that find no sidecar.
- ``lost, half done, none indexed``: the worst case, a lost job that made 50,000 outputs
  and wrote none of its index (100,000 GETs, half of them finding a sidecar).
Each lost case closes the mark (the plan has the lost job's runs), so it is paid once.

Then the lost half-done job is rebuilt as ``editpipe resume JOB --output ROOT`` does (its
sidecars read, its finished runs recorded in Redis; the rest counted, not run).

Each figure is one plan (the first, the one that pays), with the storage requests it made,
what they would cost on S3 (GET $0.0004, LIST $0.005, PUT $0.005 per 1,000), and its
seconds beside the plan with nothing open. The root is a local directory; ``--s3-runs N``
repeats the cases on moto's S3 server with an N-output root (default 2,000: the protocol's
cost per request, scaled down; moto serves about 100 GETs a second on 2 cores, real S3 more).
Of the LISTs, the one of ``_index/open/`` is what looking for lost jobs adds.

    .venv/bin/python bench/index.py [--runs 100000] [--s3-runs 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path

import boto3

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import machine, moto_server, workdir, write_feed_manifest  # noqa: E402
from pipeline.embedded import private_redis  # noqa: E402
from pipeline.layout import job_file, sidecar_key  # noqa: E402
from pipeline.ledger import utc_now  # noqa: E402
from pipeline.plan import Plan, plan_runs  # noqa: E402
from pipeline.manifest import load_manifest  # noqa: E402
from pipeline.modelspec import load_model_specs  # noqa: E402
from pipeline.records import Sidecar  # noqa: E402
from pipeline.recovery import rebuild  # noqa: E402
from pipeline.run_index import OPEN, OpenMark, batch_key, fingerprint, index_line, job_key, mark_open  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.state import State, flush  # noqa: E402
from pipeline.storage import Storage, open_storage  # noqa: E402
from pipeline.submission import look_up_done  # noqa: E402

PRICE_PER_1000 = {"GET": Decimal("0.0004"), "LIST": Decimal("0.005"), "PUT": Decimal("0.005"),
                  "DELETE": Decimal("0")}
LOST_JOB = "made-them-20261201T020000Z-0a1b2c"
WRITE_THREADS = 16


class Counted(Storage):
    """A storage that counts the requests an S3 root would receive (a listing is one per
    1,000 keys)."""

    def __init__(self, inner: Storage):
        self.inner = inner
        self.root = inner.root
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()  # sidecars are read from many threads

    def _count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.requests[kind] += n

    def put_bytes(self, key: str, data: bytes, content_type: str | None = None) -> None:
        self._count("PUT")
        self.inner.put_bytes(key, data, content_type)

    def get_bytes(self, key: str) -> bytes:
        self._count("GET")
        return self.inner.get_bytes(key)

    def exists(self, key: str) -> bool:
        self._count("GET")  # a HEAD is priced as a GET
        return self.inner.exists(key)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        keys = list(self.inner.list_keys(prefix))
        self._count("LIST", max(1, math.ceil(len(keys) / 1000)))
        return iter(keys)

    def delete_keys(self, keys: list[str]) -> None:
        self._count("DELETE", math.ceil(len(keys) / 1000))
        self.inner.delete_keys(keys)

    def url_for(self, key: str, expires_s: int = 7 * 24 * 3600) -> str:
        return self.inner.url_for(key, expires_s)

    def append_text(self, key: str, text: str, content_type: str | None = None) -> None:
        self._count("GET")  # on S3: the object read, then written back if unchanged
        self._count("PUT")
        self.inner.append_text(key, text, content_type)


def build_root(storage: Storage, plan: Plan) -> None:
    """An output and its sidecar per run, as the lost job's collects wrote them."""
    def write(run) -> None:
        storage.put_bytes(run.output_key, b"\x89PNG")
        sidecar = Sidecar(run, LOST_JOB, f"pred-{run.index}", Decimal("0.10"))
        storage.put_text(sidecar_key(run.output_key), json.dumps(sidecar.to_dict()), "application/json")

    with ThreadPoolExecutor(WRITE_THREADS) as pool:
        list(pool.map(write, plan.runs))


def set_index(storage: Storage, plan: Plan, *, indexed: int, batches: bool, open_mark: bool) -> None:
    """The index as it would be: the first ``indexed`` runs' lines, as one finished job's
    segment or as running batches of 500; the lost job's open mark or none."""
    storage.delete_keys([key for key in storage.list_keys("_index/")])
    lines = [index_line(run.run_key, run.output_key) for run in plan.runs[:indexed]]
    if batches:
        for n, start in enumerate(range(0, len(lines), 500), start=1):
            storage.put_text(batch_key(LOST_JOB, n), "\n".join(lines[start:start + 500]) + "\n")
    elif lines:
        storage.put_text(job_key(LOST_JOB), "\n".join(lines) + "\n")
    if open_mark:
        mark_open(storage, OpenMark(job_id=LOST_JOB, created_at=utc_now(), runs=len(plan.runs),
                                    fingerprint=fingerprint(run.run_key for run in plan.runs)))


def one_plan(storage: Storage, plan: Plan, state: State) -> tuple[float, Counter[str], int]:
    counted = Counted(storage)
    start = time.perf_counter()
    done, _ = look_up_done(counted, plan, jobs=state.jobs)
    return time.perf_counter() - start, counted.requests, len(done)


def dollars(requests: Counter[str]) -> Decimal:
    return sum((PRICE_PER_1000[kind] * n / 1000 for kind, n in requests.items()), Decimal("0"))


def run_cases(storage: Storage, plan: Plan, state: State, label: str) -> None:
    runs = len(plan.runs)
    unindexed = max(1, runs // 100)
    build_s = time.perf_counter()
    build_root(storage, plan)
    print(f"[{label}] root of {runs:,} outputs + sidecars written in {time.perf_counter() - build_s:.1f} s")
    cases = []
    set_index(storage, plan, indexed=runs, batches=False, open_mark=False)
    cases.append(("no open job", *one_plan(storage, plan, state), runs))
    set_index(storage, plan, indexed=runs - unindexed, batches=True, open_mark=True)
    cases.append((f"lost, last {unindexed:,} unindexed", *one_plan(storage, plan, state), runs))
    after = one_plan(storage, plan, state)
    cases.append(("  the plan after it", *after, runs))
    assert not list(storage.list_keys(OPEN)), "the lost job's mark should be closed"
    half = plan.runs[runs // 2:]
    storage.delete_keys([key for run in half for key in (run.output_key, sidecar_key(run.output_key))])
    set_index(storage, plan, indexed=runs // 2, batches=True, open_mark=True)
    cases.append(("lost, half done", *one_plan(storage, plan, state), runs // 2))
    set_index(storage, plan, indexed=0, batches=False, open_mark=True)
    cases.append(("lost, half done, none indexed", *one_plan(storage, plan, state), runs // 2))
    base = cases[0][1]
    print(f"[{label}] {'case':<34} {'done':>8} {'seconds':>8} {'extra s':>8} {'GET':>8} {'LIST':>6} {'PUT':>4}"
          f" {'S3 $':>8}")
    for name, seconds, requests, done, expected in cases:
        assert done == expected, f"{name}: {done} found, {expected} expected"
        print(f"[{label}] {name:<34} {done:>8,} {seconds:>8.2f} {seconds - base:>+8.2f} {requests['GET']:>8,}"
              f" {requests['LIST']:>6,} {requests['PUT']:>4} {dollars(requests):>8.4f}")


def rebuild_lost(storage: Storage, manifest: Path, plan: Plan, state: State, settings: Settings, label: str) -> None:
    """``editpipe resume JOB --output ROOT`` of the lost half-done job (no workers: what it
    would send them is only counted)."""
    storage.put_text(job_file(LOST_JOB, "manifest.yaml"), manifest.read_text())
    mark_open(storage, OpenMark(job_id=LOST_JOB, created_at=utc_now(), runs=len(plan.runs),
                                fingerprint=fingerprint(run.run_key for run in plan.runs),
                                manifest_dir=str(manifest.parent)))
    sent: list[int] = []
    counted = Counted(storage)
    start = time.perf_counter()
    rebuilt = rebuild(settings, state, counted, LOST_JOB, enqueue_runs=lambda _, indices: sent.extend(indices),
                      finalize=lambda *_: None)
    seconds = time.perf_counter() - start
    assert rebuilt.succeeded == len(plan.runs) // 2 and len(sent) == len(plan.runs) - rebuilt.succeeded
    print(f"[{label}] rebuild of the lost half-done job: {seconds:.1f} s ({rebuilt.succeeded:,} runs recorded "
          f"from their sidecars, {len(sent):,} sent to run; {counted.requests['GET']:,} GETs, "
          f"S3 ${dollars(counted.requests):.4f})")


def manifest_plan(directory: Path, runs: int, output: str, settings: Settings) -> tuple[Path, Plan]:
    specs = load_model_specs(settings.models_dir)
    path = write_feed_manifest(directory, runs, output)
    return path, plan_runs(load_manifest(path, specs), specs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=100_000)
    parser.add_argument("--s3-runs", type=int, default=2_000)
    args = parser.parse_args()
    print(machine())
    with workdir() as work, private_redis(work / "redis") as redis_url:
        state = State.from_url(redis_url)
        settings = Settings.from_env({"REDIS_URL": redis_url})
        local = work / "root"
        storage = open_storage(str(local), settings)
        manifest, plan = manifest_plan(work / "m", args.runs, str(local), settings)
        run_cases(storage, plan, state, "local")
        rebuild_lost(storage, manifest, plan, state, settings, "local")
        if args.s3_runs:
            flush(redis_url)  # the rebuilt job is known there now; the same job is lost again
            with moto_server() as moto:
                s3_settings = Settings.from_env({"REDIS_URL": redis_url, "S3_ENDPOINT_URL": moto.url})
                boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket="bench")
                root = "s3://bench/out"
                storage = open_storage(root, s3_settings)
                manifest, plan = manifest_plan(work / "s3m", args.s3_runs, root, s3_settings)
                run_cases(storage, plan, state, "moto")
                rebuild_lost(storage, manifest, plan, state, s3_settings, "moto")
    return 0


if __name__ == "__main__":
    sys.exit(main())
