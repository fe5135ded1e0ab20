"""The cost of size: what editpipe does with manifests whose product of dimensions is huge.

Each case is a function that writes its inputs, runs one ``editpipe`` command in a child
process (its own interpreter, so that its peak RSS is its own: the ``ru_maxrss`` that ``os.wait4``
gives for it) and returns its figures beside their
targets. Cases so far:

- ``refused``: the manifest of issue 15, a 100,000-row CSV feed (an https URL per row plus
  one of three local files shared by every row) × 10 prompts × a 15 × 3 × 3 × 3 option matrix
  × ``variants: 4`` = 1,620,000,000 runs. ``editpipe plan`` must refuse it by arithmetic,
  before a run is built: exit 2, the count in its message, ≤ 2 s, ≤ 200 MB peak RSS.

- ``catalog``: a 100,000-row CSV feed (the same rows) × 10 prompts = 1,000,000 runs into a
  fresh local output root. ``editpipe plan``: ≤ 10 s and ≤ 500 MB peak RSS. Then the job is
  recorded and handed to the workers as ``editpipe submit`` does (``submission.prepare`` and
  ``submission.submit`` against a private Redis, no worker taking it): ≤ 60 s, and what Redis
  holds for it, ``INFO memory`` ``used_memory`` after minus before, ≤ 300 bytes per queued run.

- ``replan``: the same 1,000,000-run catalog planned again (as ``editpipe plan`` plans:
  ``submission.prepare``, no Redis) against its finished output root on moto's S3 server:
  $0.00 to pay, every run unchanged, decided in ≤ 60 s; the storage requests it took are
  counted at the wire (botocore's ``before-send`` event on the client the plan uses) and
  printed with what they would cost on S3. The root holds what a plan reads of a finished
  job: its index segment (``_index/jobs/<job>.jsonl``, 1,000,000 lines, as finalize writes
  it) and its records; the outputs themselves are not written (a plan whose index answers
  reads none of them, so 2,000,000 more objects would change no figure, only the setup).

- ``finished``: what a finished job leaves in Redis. A 2,000-run job (a feed × 1 prompt) is
  run to its end by two workers against the simulator and moto's S3 server; then the bytes
  Redis holds for it (``MEMORY USAGE`` of each of its keys) per run, and its expiry: a
  finalized job's keys expire after ``EDITPIPE_FINISHED_JOB_TTL_S`` (default 7 days; 20 s
  here, so that the bench sees it) and the bench checks that nothing of the job is left.

Each child runs under a 1.5 GiB address-space limit (``RLIMIT_AS``), as the issue's repro did,
so that a regression dies with a MemoryError rather than taking the machine's memory.

    .venv/bin/python bench/scale.py [--case refused] [--case catalog] [--case replan] [--case finished]

Exits 1 when a figure misses its target.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, machine, verdict

ROWS = 100_000
ADDRESS_SPACE_LIMIT = 3 << 29  # 1.5 GiB


@dataclass
class Figure:
    name: str
    value: float
    target: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.value <= self.target

    def line(self) -> str:
        return (f"  {self.name:<12} {self.value:>9.2f} {self.unit:<3} target ≤ {self.target:g} {self.unit:<3} "
                f"{verdict(self.ok)}")


@dataclass
class Result:
    parameters: str
    figures: list[Figure]
    checks: list[tuple[str, bool]]  # what must hold besides the figures, and whether it did
    output: str  # what the command printed, shown as it is

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.figures) and all(held for _, held in self.checks)


@dataclass
class Child:
    exit_code: int
    wall_s: float
    peak_rss_mb: float
    stdout: str
    stderr: str


def run_editpipe(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Child:
    """``editpipe ARGS`` in a child interpreter under ``ADDRESS_SPACE_LIMIT``: its wall time,
    exit code and peak RSS (``os.wait4`` gives the resource use of that child alone)."""
    return run_child(["-c", "from pipeline.cli import main; main()", *args], cwd, env)


def run_child(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> Child:
    """``python ARGV`` as ``run_editpipe`` runs ``editpipe``."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))

    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as errors:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
            stdout=out, stderr=errors, text=True, preexec_fn=limit,
        )
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        errors.seek(0)
        # ru_maxrss is in KiB on Linux.
        return Child(proc.returncode, wall, usage.ru_maxrss / 1024, out.read(), errors.read())


# ---- inputs -------------------------------------------------------------------------------


def write_feed(directory: Path, rows: int = ROWS) -> Path:
    """``rows`` products: an https image each, and one of three local backdrops (8 px PNGs)."""
    for i, color in enumerate(("red", "green", "blue")):
        Image.new("RGB", (8, 8), color).save(directory / f"backdrop-{i}.png")
    path = directory / "products.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sku", "image_url", "backdrop", "title", "color"])
        for i in range(rows):
            writer.writerow([f"sku-{i:06d}", f"https://cdn.example.com/products/{i:06d}/front.jpg",
                             f"backdrop-{i % 3}.png", f"drop earrings, model {i}",
                             ("gold", "silver", "rose gold")[i % 3]])
    return path


def write_refused_manifest(directory: Path) -> Path:
    write_feed(directory)
    prompts = "".join(f"  - id: p{j}\n    text: Editorial photograph {j} of the {{color}} {{title}}.\n"
                      for j in range(10))
    path = directory / "huge.yaml"
    path.write_text(
        "version: 1\nname: huge\noutput: out\n"
        "defaults:\n  variants: 4\n"
        "catalog:\n  feed: products.csv\n  id: sku\n  images: [image_url, backdrop]\n  vars: [title, color]\n"
        f"prompts:\n{prompts}"
        "matrix:\n"
        '  aspect_ratio: ["1:1", "2:3", "3:2", "1:2", "2:1", "1:3", "3:1", "3:4", "4:3", "4:5", "5:4",'
        ' "9:16", "16:9", "9:21", "21:9"]\n'
        "  resolution: [1k, 2k, 4k]\n  quality: [low, medium, high]\n  output_format: [png, jpeg, webp]\n"
    )
    return path


def write_catalog_manifest(directory: Path, output: str = "out") -> Path:
    """The feed of ``write_feed`` × 10 prompts, each using the row's vars: 1,000,000 runs."""
    write_feed(directory)
    prompts = "".join(f"  - id: p{j}\n    text: Editorial photograph {j} of the {{color}} {{title}}.\n"
                      for j in range(10))
    path = directory / "catalog.yaml"
    path.write_text(
        f"version: 1\nname: catalog\noutput: {output}\n"
        "catalog:\n  feed: products.csv\n  id: sku\n  images: [image_url, backdrop]\n  vars: [title, color]\n"
        f"prompts:\n{prompts}"
    )
    return path


def enqueue_child(manifest: Path, redis_url: str) -> dict:
    """In a child: plan ``manifest`` and submit it as ``editpipe submit`` does (the job
    recorded in Redis, its runs finished or handed out, the first message sent); the figures
    as a dict. Redis's ``used_memory`` is read before and after the submit alone."""
    from pipeline.report import finalize_job
    from pipeline.settings import Settings
    from pipeline.state import State
    from pipeline.submission import prepare, submit
    from workers.celery_app import job_enqueuer

    settings = Settings.from_env({**os.environ, "REDIS_URL": redis_url})
    state = State.from_url(redis_url)
    started = time.perf_counter()
    prepared = prepare(manifest, settings, state=state)
    plan_s = time.perf_counter() - started
    enqueue = job_enqueuer(settings)
    before = state.memory_used()
    started = time.perf_counter()
    job_id = submit(prepared, state, enqueue, finalize=finalize_job)
    submit_s = time.perf_counter() - started
    after = state.memory_used()
    return {"job_id": job_id, "runs": state.jobs.status(job_id).total, "plan_s": plan_s, "submit_s": submit_s,
            "used_before": before, "used_after": after}


# S3's request prices (us-east-1, per 1,000): what a plan's requests would cost there.
S3_PRICE_PER_1000 = {"GET": 0.0004, "HEAD": 0.0004, "LIST": 0.005, "PUT": 0.005}


def replan_child(manifest: Path, s3_endpoint: str, setup: bool) -> dict:
    """In a child: with ``setup``, write the finished job's index segment under the
    manifest's output root (as finalize writes it) and its records; else plan the manifest
    as ``editpipe plan`` does, counting the storage requests it sends."""
    from pipeline.ledger import usd
    from pipeline.manifest import load_manifest
    from pipeline.modelspec import load_model_specs
    from pipeline.plan import plan_runs
    from pipeline.run_index import index_line, job_key
    from pipeline.settings import Settings
    from pipeline.storage import open_storage, s3_client
    from pipeline.submission import prepare

    settings = Settings.from_env({**os.environ, "S3_ENDPOINT_URL": s3_endpoint})
    if setup:
        specs = load_model_specs(settings.models_dir)
        manifest_ = load_manifest(manifest, specs)
        plan = plan_runs(manifest_, specs)
        storage = open_storage(manifest_.output, settings)
        job_id = "catalog-20261202T020000Z-0a1b2c"
        with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
            for run_key, output_key in plan.keys_and_outputs():
                f.write(index_line(run_key, output_key) + "\n")
            f.flush()
            storage.put_file(job_key(job_id), Path(f.name), "application/x-ndjson")
        storage.put_text(f"jobs/{job_id}/manifest.yaml", manifest.read_text(), "application/yaml")
        return {"written": len(plan.runs)}
    requests: dict[str, int] = {}

    def count(request, **_: object) -> None:
        method = request.method
        kind = "LIST" if method == "GET" and "list-type=2" in request.url else method
        requests[kind] = requests.get(kind, 0) + 1

    s3_client(settings).meta.events.register("before-send.s3", count)
    started = time.perf_counter()
    prepared = prepare(manifest, settings)
    return {"seconds": time.perf_counter() - started, "runs": len(prepared.plan.runs),
            "unchanged": prepared.changes.unchanged, "to_pay": usd(prepared.estimated_usd), "requests": requests}


# ---- cases ----------------------------------------------------------------------------------


def case_refused(work: Path) -> Result:
    """``editpipe plan`` on 1.6 billion runs: refused by arithmetic, exit 2, with the count."""
    manifest = write_refused_manifest(work)
    child = run_editpipe(["plan", str(manifest)], cwd=work)
    message = child.stderr.strip()
    return Result(
        parameters=f"{ROWS:,}-row CSV feed × 10 prompts × matrix 15 × 3 × 3 × 3 × variants 4 "
                   f"= {ROWS * 10 * 405 * 4:,} runs; `editpipe plan`, RLIMIT_AS 1.5 GiB",
        figures=[Figure("refused in", child.wall_s, 2.0, "s"), Figure("peak RSS", child.peak_rss_mb, 200.0, "MB")],
        checks=[
            (f"exit code {child.exit_code} (2 wanted)", child.exit_code == 2),
            ("the count in the message (1,620,000,000)", "1,620,000,000" in message),
            ("no traceback", "Traceback" not in message),
        ],
        output=message,
    )


def case_catalog(work: Path) -> Result:
    """1,000,000 runs: ``editpipe plan``, then the submit into a private Redis."""
    from pipeline.embedded import private_redis

    manifest = write_catalog_manifest(work)
    planned = run_editpipe(["plan", str(manifest), "--limit", "3"], cwd=work)
    (work / "redis").mkdir()
    with private_redis(work / "redis") as redis_url:
        child = run_child([__file__, "--enqueue-child", str(manifest), redis_url], cwd=work)
    figures = [Figure("plan", planned.wall_s, 10.0, "s"), Figure("plan RSS", planned.peak_rss_mb, 500.0, "MB")]
    checks = [(f"plan exit code {planned.exit_code} (0 wanted)", planned.exit_code == 0)]
    output = planned.stdout.strip()[-1500:] + planned.stderr.strip()[-1500:]
    if child.exit_code == 0:
        got = json.loads(child.stdout.strip().splitlines()[-1])
        per_run = (got["used_after"] - got["used_before"]) / max(1, got["runs"])
        figures += [Figure("submit", got["submit_s"], 60.0, "s"),
                    Figure("Redis/run", per_run, 300.0, "B"),
                    Figure("submit RSS", child.peak_rss_mb, 500.0, "MB")]
        checks.append((f"{got['runs']:,} runs recorded (1,000,000 wanted)", got["runs"] == ROWS * 10))
        output += (f"\nsubmit child: planned in {got['plan_s']:.1f} s, Redis used_memory "
                   f"{got['used_before'] / 1e6:.1f} MB before, {got['used_after'] / 1e6:.1f} MB after")
    else:
        checks.append((f"submit child exit code {child.exit_code} (0 wanted)", False))
        output += "\n" + child.stderr.strip()[-2000:]
    return Result(
        parameters=f"{ROWS:,}-row CSV feed × 10 prompts = {ROWS * 10:,} runs; RLIMIT_AS 1.5 GiB",
        figures=figures, checks=checks, output=output,
    )


def case_replan(work: Path) -> Result:
    """The unchanged 1,000,000-run catalog planned again against its finished root on S3."""
    import boto3

    from _common import moto_server

    with moto_server() as moto:
        boto3.client("s3", endpoint_url=moto.url).create_bucket(Bucket="catalog")
        manifest = write_catalog_manifest(work, output="s3://catalog/edits")
        setup = run_child([__file__, "--replan-child", str(manifest), moto.url, "setup"], cwd=work)
        if setup.exit_code != 0:
            return Result("setup failed", [], [("setup", False)], setup.stderr[-2000:])
        child = run_child([__file__, "--replan-child", str(manifest), moto.url, "plan"], cwd=work)
    if child.exit_code != 0:
        return Result("the plan failed", [], [(f"exit code {child.exit_code}", False)], child.stderr[-2000:])
    got = json.loads(child.stdout.strip().splitlines()[-1])
    requests = got["requests"]
    s3_usd = sum(S3_PRICE_PER_1000.get(kind, 0) * n / 1000 for kind, n in requests.items())
    shown = ", ".join(f"{n} {kind}" for kind, n in sorted(requests.items()))
    return Result(
        parameters=f"{ROWS * 10:,} runs planned again against their finished root on moto's S3 server; "
                   "RLIMIT_AS 1.5 GiB",
        figures=[Figure("decided in", got["seconds"], 60.0, "s"), Figure("peak RSS", child.peak_rss_mb, 500.0, "MB")],
        checks=[(f"to pay ${got['to_pay']} ($0.00 wanted)", got["to_pay"] == "0.00"),
                (f"{got['unchanged']:,} runs unchanged (all {got['runs']:,} wanted)", got["unchanged"] == got["runs"])],
        output=(f"storage requests: {sum(requests.values())} ({shown}); the same on S3 itself (a listing is one "
                f"request per 1,000 keys, and the finished job's index is one object), costing ${s3_usd:.6f}"),
    )


FINISHED_RUNS = 2_000
FINISHED_TTL_S = 20


def case_finished(work: Path) -> Result:
    """A real job run to its end: the bytes per run Redis keeps for it, then none once it expired."""
    import boto3

    from _common import editpipe_settings, editpipe_workers, moto_server, simulator, submit_and_wait, \
        write_feed_manifest
    from pipeline.embedded import private_redis
    from pipeline.state import State

    (work / "redis").mkdir()
    (work / "logs").mkdir()
    os.environ["EDITPIPE_FINISHED_JOB_TTL_S"] = str(FINISHED_TTL_S)  # the workers' environment
    with private_redis(work / "redis") as redis_url, simulator(latency_s=0.5) as sim, moto_server() as s3:
        boto3.client("s3", endpoint_url=s3.url).create_bucket(Bucket="finished")
        settings = editpipe_settings(redis_url=redis_url, sim=sim, images_per_minute=100_000, max_concurrent=5_000,
                                     s3_endpoint=s3.url, EDITPIPE_FINISHED_JOB_TTL_S=str(FINISHED_TTL_S))
        manifest = write_feed_manifest(work / "manifest", FINISHED_RUNS, "s3://finished/out", name="finished")
        state = State.from_url(redis_url)
        with editpipe_workers(settings, count=2, concurrency=4, logdir=work / "logs"):
            _, status, wall_s = submit_and_wait(settings, manifest, timeout_s=900)
        held = state.jobs.memory(status.id)
        ttl = state.jobs.ttl(status.id)
        time.sleep(FINISHED_TTL_S + 1)
        left = state.jobs.memory(status.id)
    per_run = held / FINISHED_RUNS
    return Result(
        parameters=f"{FINISHED_RUNS:,} runs run to their end (2 workers, simulator latency 0.5 s, moto S3) "
                   f"in {wall_s:.0f} s; EDITPIPE_FINISHED_JOB_TTL_S={FINISHED_TTL_S} (default 7 days)",
        figures=[],
        checks=[(f"job {status.status}, {status.succeeded:,} succeeded", status.succeeded == FINISHED_RUNS),
                (f"its keys expire in {ttl} s after finalize (≤ {FINISHED_TTL_S} wanted)",
                 ttl is not None and 0 < ttl <= FINISHED_TTL_S),
                (f"left in Redis once expired: {left} bytes (0 wanted)", left == 0)],
        output=(f"a finished job holds {held / 1e6:.2f} MB in Redis, {per_run:.0f} bytes per run (results, "
                f"prediction ids, ledger lines, its blueprint), until it expires; then nothing: storage is its "
                f"record (`status --output`, `resume --output`). A 1,000,000-run job: about "
                f"{per_run * 1e6 / 1e9:.2f} GB for its retention."),
    )


CASES: dict[str, Callable[[Path], Result]] = {"refused": case_refused, "catalog": case_catalog,
                                              "replan": case_replan, "finished": case_finished}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append", help="run only these cases")
    parser.add_argument("--replan-child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--enqueue-child", nargs=2, metavar=("MANIFEST", "REDIS_URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.replan_child:
        manifest, endpoint, what = args.replan_child
        print(json.dumps(replan_child(Path(manifest), endpoint, what == "setup")))
        return 0
    if args.enqueue_child:
        print(json.dumps(enqueue_child(Path(args.enqueue_child[0]), args.enqueue_child[1])))
        return 0
    print(f"editpipe scale benchmark; {machine()}\n")
    missed = False
    for name in args.case or CASES:
        with tempfile.TemporaryDirectory(prefix="editpipe-scale-") as tmp:
            result = CASES[name](Path(tmp))
        print(f"{name}: {result.parameters}")
        for figure in result.figures:
            print(figure.line())
        for what, held in result.checks:
            print(f"  {what:<52} {verdict(held)}")
        print("  its message:\n" + "\n".join(f"    {line}" for line in result.output.splitlines()) + "\n")
        missed |= not result.ok
    print("every target met" if not missed else "a target was missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
