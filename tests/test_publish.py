"""Review decisions and publishing (``pipeline.review``, ``pipeline.publish``, ``editpipe review``,
``editpipe publish``), on S3 (moto's server) and on a local output root.

Decisions from the command line land in ``review.jsonl`` exactly; a decision that cannot be
taken writes nothing; publishing copies the approved outputs once (a second call copies
nothing, a later approval is published by the next call); ``review: auto`` publishes what
passed its checks when the job finishes, and a re-run that made the same pictures changes
nothing at the destination; ``review: required`` tells its notification how many wait.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import AWS_ENV, ROOT, run_job, write_manifest, write_yaml
from pipeline.cli import main
from pipeline.errors import ManifestError, NoOutput, ReviewError, SchedulesFileError, UnknownRun
from pipeline.layout import job_file, sidecar_key
from pipeline.manifest import load_manifest
from pipeline.report import finalize_job
from pipeline.publish import publish_job
from pipeline.review import Decision, append_decisions, decision_log, job_results, make_decisions, read_decisions
from pipeline.schedules import load_schedules, prepare_schedule
from pipeline.storage import LocalStorage, Storage, open_storage
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer

PROMPTS_WITH_A_FAILURE = """
  - id: editorial
    text: A model wearing the {product}, warm natural light.
  - id: broken
    text: A flat-lay of the {product} [sim:fail]."""


def publish_block(to: str, review: str = "required", checks: str = "[aspect_ratio, not_nsfw, changed]") -> str:
    return f"publish:\n  to: {to}\n  review: {review}\n  checks: {checks}\n"


def cli_env(settings) -> dict[str, str]:
    return {**AWS_ENV, "S3_ENDPOINT_URL": settings.s3_endpoint_url, "REDIS_URL": settings.redis_url}


def editpipe(settings, *args: str):
    return CliRunner().invoke(main, list(args), env=cli_env(settings))


def tree(storage: Storage, prefix: str = "") -> dict[str, bytes]:
    """Every object under ``prefix`` with its bytes: what a destination holds."""
    return {key: storage.get_bytes(key) for key in storage.list_keys(prefix)}


def results_of(storage: Storage, job_id: str) -> list[dict]:
    return [json.loads(line) for line in storage.get_text(job_file(job_id, "results.jsonl")).splitlines()]


@pytest.fixture(params=["s3", "local"])
def roots(request, tmp_path, bucket, settings):
    """(output root, publish root) on S3 or in local folders."""
    if request.param == "s3":
        return f"s3://{bucket}/out", f"s3://{bucket}/live"
    return str(tmp_path / "out"), str(tmp_path / "live")


def test_decisions_from_the_command_line_then_publish_copies_exactly_the_approved_once(
    tmp_path, settings, sim, workers, roots
):
    out_root, live_root = roots
    workers.start(1)
    manifest = write_manifest(tmp_path, out_root, extra=publish_block(live_root + "/{image_set}/{prompt}/{aspect_ratio}"))
    status = run_job(settings, manifest)
    assert status.status == "succeeded" and status.succeeded == 12
    out, live = open_storage(out_root, settings), open_storage(live_root, settings)
    runs = results_of(out, status.id)
    keys = [r["run_key"] for r in runs]

    approved = editpipe(settings, "review", status.id, "--approve", keys[0], keys[1][:10], keys[2],
                        "--reviewer", "ana@desk-1")
    assert approved.exit_code == 0, approved.output
    assert "3 decision(s) recorded" in approved.output and "3 approved, 0 rejected, 0 regenerate, 9 waiting" \
        in approved.output
    rejected = editpipe(settings, "review", status.id, "--reject", keys[3], "--reason", "the clasp is  cut off",
                        "--reviewer", "ben@desk-2")
    assert rejected.exit_code == 0, rejected.output

    log = decision_log(out, status.id)
    assert [(d.run_key, d.index, d.decision, d.reason, d.reviewer) for d in log] == [
        (keys[0], 0, "approve", "", "ana@desk-1"), (keys[1], 1, "approve", "", "ana@desk-1"),
        (keys[2], 2, "approve", "", "ana@desk-1"), (keys[3], 3, "reject", "the clasp is cut off", "ben@desk-2")]
    assert all(d.at.endswith("Z") for d in log)

    dry = editpipe(settings, "publish", status.id, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.count("  would copy ") == 3 and "(dry run: nothing was written)" in dry.output
    assert tree(live) == {} and not out.exists(job_file(status.id, "published.jsonl"))

    first = editpipe(settings, "publish", status.id)
    assert first.exit_code == 0, first.output
    assert f"3 copied to {live_root}/{{image_set}}/{{prompt}}/{{aspect_ratio}}, 0 published before, 9 held back" \
        in first.output
    placed = {f"{r['image_set']}/{r['prompt']}/{r['options']['aspect_ratio']}.png": r for r in runs[:3]}
    published = tree(live)
    assert set(published) == set(placed) | {sidecar_key(k) for k in placed}
    for key, run in placed.items():
        assert published[key] == out.get_bytes(run["output"])
        sidecar = json.loads(published[sidecar_key(key)])
        assert (sidecar["job_id"], sidecar["run_key"], sidecar["prediction_id"]) == (
            status.id, run["run_key"], run["prediction_id"])
        assert sidecar["source"] == out.location(run["output"]) and set(sidecar["hashes"]) == {"phash", "colorhash"}
    lines = [json.loads(x) for x in out.get_text(job_file(status.id, "published.jsonl")).splitlines()]
    assert sorted(line["run_key"] for line in lines) == sorted(keys[:3])

    second = editpipe(settings, "publish", status.id)
    assert second.exit_code == 0, second.output
    assert "0 copied" in second.output and "3 published before" in second.output
    assert tree(live) == published
    assert [json.loads(x) for x in out.get_text(job_file(status.id, "published.jsonl")).splitlines()] == lines

    later = editpipe(settings, "review", status.id, "--approve", keys[5])
    assert later.exit_code == 0, later.output
    third = editpipe(settings, "publish", status.id)
    assert third.exit_code == 0, third.output
    assert "1 copied" in third.output and "3 published before" in third.output
    new = {k: v for k, v in tree(live).items() if k not in published}
    fifth = f"{runs[5]['image_set']}/{runs[5]['prompt']}/{runs[5]['options']['aspect_ratio']}.png"
    assert set(new) == {fifth, sidecar_key(fifth)}
    assert len(out.get_text(job_file(status.id, "published.jsonl")).splitlines()) == 4


def test_approve_passing_approves_only_undecided_runs_whose_checks_passed_and_held_ones_say_why(
    tmp_path, settings, sim, workers, bucket
):
    workers.start(1)
    prompts = """
  - id: editorial
    text: A model wearing the {product}, warm natural light.
  - id: flagged
    text: A flat-lay of the {product} [sim:nsfw]."""
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", prompts=prompts,
                              extra=publish_block(f"s3://{bucket}/live/{{image_set}}/{{prompt}}/{{aspect_ratio}}"))
    status = run_job(settings, manifest)
    out = open_storage(f"s3://{bucket}/out", settings)
    runs = results_of(out, status.id)
    editorial = [r["run_key"] for r in runs if r["prompt"] == "editorial"]
    assert editpipe(settings, "review", status.id, "--reject", editorial[0], "--reason", "blurry").exit_code == 0

    passing = editpipe(settings, "review", status.id, "--approve-passing")

    assert passing.exit_code == 0, passing.output
    latest = read_decisions(out, status.id)
    assert {k for k, d in latest.items() if d.decision == "approve"} == set(editorial[1:])
    assert latest[editorial[0]].decision == "reject"  # never overturned by --approve-passing
    dry = editpipe(settings, "publish", status.id, "--dry-run")
    assert dry.output.count("  would copy ") == 5
    assert dry.output.count("waiting for review (checks failed: not_nsfw)") == 6
    assert "rejected by " in dry.output and ": blurry" in dry.output


def test_a_decision_that_cannot_be_taken_is_refused_and_nothing_is_written(tmp_path, settings, sim, workers):
    workers.start(1)
    manifest = write_manifest(tmp_path, str(tmp_path / "out"), prompts=PROMPTS_WITH_A_FAILURE,
                              extra=publish_block(str(tmp_path / "live") + "/{image_set}/{prompt}/{aspect_ratio}"))
    status = run_job(settings, manifest)
    assert status.succeeded == 6 and status.failed == 6
    out = open_storage(str(tmp_path / "out"), settings)
    runs = results_of(out, status.id)
    good = next(r["run_key"] for r in runs if r["status"] == "succeeded")
    failed = next(r["run_key"] for r in runs if r["status"] == "failed")

    unknown = editpipe(settings, "review", status.id, "--approve", good, "0" * 64)
    assert unknown.exit_code == 1 and f"no run '{'0' * 64}' in job {status.id}" in unknown.output
    no_output = editpipe(settings, "review", status.id, "--approve", good, failed)
    assert no_output.exit_code == 1
    assert f"run {failed} of job {status.id} has no output to review (it failed: " in no_output.output
    no_reason = editpipe(settings, "review", status.id, "--reject", good)
    assert no_reason.exit_code == 1 and "a rejection needs a reason" in no_reason.output
    too_short = editpipe(settings, "review", status.id, "--approve", good[:4])
    assert too_short.exit_code == 1 and "at least 6 of its first characters" in too_short.output
    assert not out.exists(job_file(status.id, "review.jsonl"))  # the good half of each request was not written

    for usage in (["--approve"], ["--approve", "--reject", good], ["--approve-passing", good], [good]):
        assert editpipe(settings, "review", status.id, *usage).exit_code == 2
    # Without flags the page is served (tests/test_review.py); for a job with nothing to review
    # it says so at once instead.
    page = editpipe(settings, "review", "nosuch-20261203T000000Z-abcdef", "--output", str(tmp_path / "out"))
    assert page.exit_code == 1 and "a job is reviewed once it has finished" in page.output
    not_finished = editpipe(settings, "review", "nosuch-20261203T000000Z-abcdef", "--approve-passing",
                            "--output", str(tmp_path / "out"))
    assert not_finished.exit_code == 1 and "a job is reviewed once it has finished" in not_finished.output
    assert not out.exists(job_file(status.id, "review.jsonl"))
    # What a web page answers for each.
    assert (UnknownRun.http_status, NoOutput.http_status, ReviewError.http_status) == (404, 409, 400)


def test_review_auto_publishes_what_passed_at_finish_and_a_rerun_of_the_same_pictures_changes_nothing(
    tmp_path, settings, sim, workers, bucket, state
):
    workers.start(1)
    live_root = f"s3://{bucket}/live"
    prompts = """
  - id: editorial
    text: A model wearing the {product}, warm natural light.
  - id: flagged
    text: A flat-lay of the {product} [sim:nsfw]."""
    extra = publish_block(live_root + "/{image_set}/{prompt}/{aspect_ratio}", review="auto",
                          checks="[aspect_ratio, not_nsfw, changed]")
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", prompts=prompts, extra=extra)
    out, live = open_storage(f"s3://{bucket}/out", settings), open_storage(live_root, settings)

    first = run_job(settings, manifest)
    summary = json.loads(out.get_text(job_file(first.id, "summary.json")))
    assert summary["publish"]["published"] == {"to": f"{live_root}/{{image_set}}/{{prompt}}/{{aspect_ratio}}",
                                               "copied": 6, "already": 0, "held": 6}
    published = tree(live)
    assert len(published) == 12 and all("/editorial/" in key for key in published)
    assert {json.loads(v)["job_id"] for k, v in published.items() if k.endswith(".json")} == {first.id}

    def rerun(path: Path) -> str:
        job_id = submit(prepare(path, settings, force=True), state, job_enqueuer(settings), finalize=finalize_job)
        assert follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=120).done
        return job_id

    # The same requests paid again (--force): the simulator makes the same pictures.
    second = rerun(manifest)
    lines = results_of(out, second)
    assert all(not line["checks"]["changed"]["passed"] for line in lines if line["prompt"] == "editorial")
    assert json.loads(out.get_text(job_file(second, "summary.json")))["publish"]["published"]["copied"] == 0
    assert tree(live) == published

    # A new prompt text makes new pictures (another backdrop) at the same places: published.
    manifest.write_text(manifest.read_text().replace("warm natural light", "cool studio light"))
    third = rerun(manifest)
    assert json.loads(out.get_text(job_file(third, "summary.json")))["publish"]["published"]["copied"] == 6
    now = tree(live)
    assert set(now) == set(published) and all(now[k] != published[k] for k in now)
    assert {json.loads(v)["job_id"] for k, v in now.items() if k.endswith(".json")} == {third}


class Hook:
    """A webhook on a free loopback port that keeps what it is POSTed."""

    def __init__(self):
        self.bodies: list[dict] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                hook.bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_review_required_notification_says_how_many_outputs_wait_for_review_and_where(
    tmp_path, settings, sim, workers, bucket, state
):
    workers.start(1)
    hook = Hook()
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", prompts=PROMPTS_WITH_A_FAILURE,
                              extra=publish_block(f"s3://{bucket}/live/{{image_set}}/{{prompt}}/{{aspect_ratio}}"))
    try:
        job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job,
                        notify_url=hook.url)
        assert follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=120).done
        deadline = time.monotonic() + 20  # the summary is POSTed just after the final status is set
        while not hook.bodies and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        hook.server.shutdown()
    [body] = hook.bodies
    publish = body["publish"]
    assert publish["waiting_review"] == 6  # the six that have an output; the failed six have nothing to review
    assert publish["review_with"] == f"editpipe review {job_id} --output s3://{bucket}/out"
    assert publish["decisions"] == f"s3://{bucket}/out/jobs/{job_id}/review.jsonl"
    assert publish["message"].startswith(f"6 output(s) wait for review: editpipe review {job_id}")
    assert not list(open_storage(f"s3://{bucket}/live", settings).list_keys())  # nothing published unreviewed


APPEND = """
import sys
from pipeline.review import Decision, append_decisions
from pipeline.settings import Settings
from pipeline.storage import open_storage
root, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
storage = open_storage(root, Settings.from_env())
for i in range(n):
    append_decisions(storage, "job-1", [Decision(f"{who}-{i:02d}", i, "approve", reviewer=who)])
"""


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_two_reviewers_on_two_machines_appending_at_once_lose_no_decision(tmp_path, settings, bucket, backend):
    root = f"s3://{bucket}/out" if backend == "s3" else str(tmp_path / "out")
    env = {**cli_env(settings), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    reviewers = [subprocess.Popen([sys.executable, "-c", APPEND, root, who, "25"], env=env, cwd=ROOT)
                 for who in ("ana", "ben")]
    assert [p.wait(timeout=120) for p in reviewers] == [0, 0]

    storage = open_storage(root, settings)
    log = decision_log(storage, "job-1")
    assert len(log) == 50
    assert sorted(d.run_key for d in log) == sorted(f"{who}-{i:02d}" for who in ("ana", "ben") for i in range(25))
    for who in ("ana", "ben"):  # each reviewer's own decisions in the order they took them
        assert [d.run_key for d in log if d.reviewer == who] == [f"{who}-{i:02d}" for i in range(25)]
    append_decisions(storage, "job-1", [Decision("ana-00", 0, "reject", "second look", "ben")])
    assert read_decisions(storage, "job-1")["ana-00"].decision == "reject"


def test_the_publish_block_is_validated_where_it_was_written(tmp_path):
    from pipeline.modelspec import load_model_specs

    manifest = write_manifest(tmp_path, str(tmp_path / "out"), extra=textwrap.dedent("""\
        publish:
          to: s3://live/{image_set}/{shade}
          review: sometimes
          checks: [aspect_ratio, min_size, sharpness]
        """))
    with pytest.raises(ManifestError) as found:
        load_manifest(manifest, load_model_specs())
    messages = [str(issue) for issue in found.value.issues]
    line = {text.split(":")[0].strip(): n for n, text in enumerate(manifest.read_text().splitlines(), 1)}
    expected = [(line["to"], "publish.to: unknown name {shade}"),
                (line["review"], "publish.review: must be 'required' or 'auto'"),
                (line["checks"], "publish.checks[1]: min_size needs the least long side in pixels"),
                (line["checks"], "publish.checks[2]: unknown check 'sharpness'")]
    for number, text in expected:
        assert any(m.startswith(f"{manifest}:{number}:") and text in m for m in messages), (text, messages)

    fine = write_manifest(tmp_path, str(tmp_path / "out"), extra="publish:\n  to: ../live/{image_set}/{prompt}\n")
    spec = load_manifest(fine, load_model_specs()).publish
    assert (spec.root, spec.key, spec.review, spec.checks) == (str(tmp_path.parent / "live"), "{image_set}/{prompt}",
                                                               "required", ())


def test_a_schedules_publish_block_replaces_its_manifests_and_is_checked_against_it(tmp_path, settings, bucket):
    manifest = write_manifest(tmp_path, f"s3://{bucket}/out", extra=publish_block(f"s3://{bucket}/a/{{image_set}}"))
    path = write_yaml(tmp_path, f"""
        schedules:
          - name: nightly
            cron: "0 2 * * *"
            manifest: {manifest}
            publish:
              to: s3://{bucket}/catalog/{{image_set}}/{{prompt}}
              review: auto
              checks: [changed]
          - name: wrong
            cron: "0 3 * * *"
            manifest: {manifest}
            publish:
              to: s3://{bucket}/catalog/{{sku}}
        """, "schedules.yaml")
    nightly, wrong = load_schedules(path)

    prepared = prepare_schedule(nightly, settings)
    spec = prepared.manifest.publish
    assert (spec.root, spec.key, spec.review, [c.name for c in spec.checks]) == (
        f"s3://{bucket}/catalog", "{image_set}/{prompt}", "auto", ["changed"])
    with pytest.raises(SchedulesFileError) as found:
        prepare_schedule(wrong, settings)
    [issue] = found.value.issues
    assert (issue.file, issue.line) == (str(path), 13) and "unknown name {sku}" in issue.message


def _finished_job(root: Path, review: str, lines: list[dict]) -> LocalStorage:
    """A finished job's records written by hand: its results, the outputs and their sidecars,
    and a summary holding its publish block (to ``root/live/{image_set}``)."""
    storage = LocalStorage(root / "out")
    spec = {"root": str(root / "live"), "key": "{image_set}", "review": review, "to": "",
            "checks": [{"name": "not_nsfw"}]}
    storage.put_text(job_file("job-1", "summary.json"), json.dumps({"publish": {"spec": spec}}))
    results = []
    for i, line in enumerate(lines):
        output = f"{line['image_set']}/v{i}.png"
        storage.put_bytes(output, picture_bytes(i))
        storage.put_text(sidecar_key(output), json.dumps({"image_set": line["image_set"], "prompt_id": "p",
                                                          "variant": 1, "options": {}, "vars": {},
                                                          "prediction_id": f"pred-{i}"}))
        results.append({"run_key": f"{i:064x}", "image_set": line["image_set"], "prompt": "p", "variant": 1,
                        "options": {}, "status": line.get("status", "succeeded"), "output": output,
                        "prediction_id": f"pred-{i}", "cost_usd": "0.10", "error": None,
                        **({"checks": line["checks"]} if "checks" in line else {})})
    storage.put_text(job_file("job-1", "results.jsonl"), "".join(json.dumps(r) + "\n" for r in results))
    return storage


def picture_bytes(seed: int) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (32, 48), (seed * 40 % 255, 90, 160)).save(out, "PNG")
    return out.getvalue()


PASS = {"not_nsfw": {"passed": True, "detail": "not flagged"}}
FAIL = {"not_nsfw": {"passed": False, "detail": "flagged"}}


def test_auto_publishes_only_checked_passing_outputs_of_its_own_and_holds_rivals_for_one_place(tmp_path):
    storage = _finished_job(tmp_path, "auto", [
        {"image_set": "ring", "checks": PASS},
        {"image_set": "hoop", "checks": FAIL},
        {"image_set": "stud"},  # rebuilt from storage: never checked
        {"image_set": "pin", "status": "skipped"},  # an earlier job's output
        {"image_set": "cuff", "checks": PASS},
        {"image_set": "cuff", "checks": PASS},  # two runs bound for live/cuff.png
    ])
    live = LocalStorage(tmp_path / "live")

    outcome = publish_job(storage, "job-1", lambda root: live)

    actions = {item.run_key[-1]: (item.action, item.reason) for item in outcome.items}
    assert actions["0"] == ("copy", "its checks passed (review: auto)")
    assert actions["1"] == ("held", "checks failed: not_nsfw (flagged)")
    assert actions["2"] == ("held", "not checked (not collected by this job's workers): approve it to publish it")
    assert actions["3"][0] == "held" and "made by an earlier job" in actions["3"][1]
    for rival in ("4", "5"):
        assert actions[rival][0] == "held" and "2 approved runs of this job go to" in actions[rival][1]
    assert sorted(live.list_keys()) == ["ring.json", "ring.png"]

    # A person settles it: the second cuff rejected, the never-checked stud approved.
    results = job_results(storage, "job-1")
    append_decisions(storage, "job-1", make_decisions(results, "job-1", [(f"{5:064x}", "reject")], reason="dull"))
    append_decisions(storage, "job-1", make_decisions(results, "job-1", [(f"{2:064x}", "approve")]))
    again = publish_job(storage, "job-1", lambda root: live)
    assert {item.run_key[-1]: item.action for item in again.items if item.action != "held"} == {
        "0": "already", "2": "copy", "4": "copy"}
    assert sorted(live.list_keys()) == ["cuff.json", "cuff.png", "ring.json", "ring.png", "stud.json", "stud.png"]
    assert live.get_bytes("cuff.png") == storage.get_bytes("cuff/v4.png")


def test_a_publish_that_died_before_its_line_finds_its_copies_there_and_records_them(tmp_path):
    storage = _finished_job(tmp_path, "required", [{"image_set": "ring", "checks": PASS}])
    live = LocalStorage(tmp_path / "live")
    append_decisions(storage, "job-1", make_decisions(job_results(storage, "job-1"), "job-1", [(f"{0:064x}", "approve")]))
    publish_job(storage, "job-1", lambda root: live)
    storage.delete_keys([job_file("job-1", "published.jsonl")])  # as if the publish died after copying

    outcome = publish_job(storage, "job-1", lambda root: live)

    assert [(item.action, item.reason) for item in outcome.items] == [("already", f"already at {live.location('ring.png')}")]
    [line] = [json.loads(x) for x in storage.get_text(job_file("job-1", "published.jsonl")).splitlines()]
    assert line["why"] == "found already published" and line["key"] == "ring.png"
