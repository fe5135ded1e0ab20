"""Structured logs: under ``EDITPIPE_LOG_FORMAT=json`` every line every editpipe process logs
is one JSON object (time, level, logger, message), a line about a run names its job, index
and prediction, and no line shows the API key or a webhook secret.

Full jobs run with recognisable fake secrets: one on workers, the webhook server, beat and
``editpipe submit --wait`` sharing a Redis; one as ``editpipe run`` with its own stack. Every
line of every process's log is read.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from pydantic import SecretStr

from conftest import AWS_ENV, ROOT, many_runs_manifest
from pipeline import logs
from pipeline.embedded import free_port
from pipeline.settings import Settings

pytestmark = pytest.mark.timeout(300)

EDITPIPE = str(Path(sys.executable).parent / "editpipe")
FAKE_KEY = "sk-FAKEKEY-0b5e7a91c4d2"
FAKE_SECRET = "FAKESECRET-7f3d19e2aa60"


def clean_env(sim, **extra: str) -> dict[str, str]:
    """A fresh shell's environment pointed at the simulator, logging JSON, with the fakes."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("REDIS_", "WAVESPEED_", "S3_", "EDITPIPE_", "AWS_"))}
    env.update(WAVESPEED_BASE_URL=sim.base_url, WAVESPEED_API_KEY=FAKE_KEY, WAVESPEED_IMAGES_PER_MINUTE="600",
               WAVESPEED_MAX_CONCURRENT="10", EDITPIPE_LOG_FORMAT="json", EDITPIPE_POLL_INITIAL="0.3",
               EDITPIPE_POLL_MAX="2", PYTHONPATH=str(ROOT), **extra)
    return env


def read_json_lines(path: Path) -> list[dict]:
    """Every line of a log, each of which must be a JSON object with the four fields."""
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
        assert isinstance(record, dict), f"{path.name}:{number}: {line!r}"
        assert {"time", "level", "logger", "message"} <= record.keys(), f"{path.name}:{number}: {line!r}"
        records.append(record)
    return records


def assert_no_secret(paths: list[Path], secrets: list[str]) -> None:
    for path in paths:
        text = path.read_text(errors="replace")
        for secret in secrets:
            assert secret not in text, f"{path.name} shows a secret"


def assert_runs_named(records: list[dict], job_id: str, runs: int) -> None:
    """Each run's submit and success lines carry its job, index and prediction."""
    for what in ("submitted", "succeeded"):
        lines = [r for r in records if r["logger"] == "pipeline.execution" and f": {what}" in r["message"]]
        assert {r["index"] for r in lines} == set(range(runs)), (what, lines)
        for r in lines:
            assert r["job_id"] == job_id and r["prediction_id"] and r["prediction_id"] in r["message"], r


def test_workers_webhook_server_beat_and_the_cli_log_json_lines_without_a_secret(
        tmp_path, sim, redis_url, s3_endpoint, bucket):
    sim.configure(api_key=FAKE_KEY)
    redis.Redis.from_url(redis_url).flushall()
    port = free_port()
    schedules = tmp_path / "schedules.yaml"
    manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=4)
    schedules.write_text(f"schedules:\n  - name: nightly\n    cron: \"0 2 * * *\"\n    timezone: UTC\n"
                         f"    manifest: {manifest}\n")
    env = clean_env(sim, REDIS_URL=redis_url, S3_ENDPOINT_URL=s3_endpoint, EDITPIPE_WEBHOOK_SECRET=FAKE_SECRET,
                    EDITPIPE_WEBHOOK_URL=f"http://127.0.0.1:{port}/webhook", EDITPIPE_SCHEDULES=str(schedules),
                    **AWS_ENV)
    log_files = {name: tmp_path / f"{name}.log" for name in ("worker-0", "worker-1", "webhooks", "beat")}
    commands = {
        "worker-0": [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO",
                     "--concurrency", "3", "-n", "json-0@%h"],
        "worker-1": [sys.executable, "-m", "celery", "-A", "workers", "worker", "--loglevel", "INFO",
                     "--concurrency", "3", "-n", "json-1@%h"],
        "webhooks": [EDITPIPE, "webhook-server", "--port", str(port)],
        "beat": [sys.executable, "-m", "celery", "-A", "workers", "beat", "--loglevel", "INFO",
                 "-s", str(tmp_path / "beat-schedule")],
    }
    procs = []
    try:
        for name, command in commands.items():
            with open(log_files[name], "wb") as out:
                procs.append(subprocess.Popen(command, env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True))
        deadline = time.monotonic() + 60
        while not all(" ready." in log_files[n].read_text() for n in ("worker-0", "worker-1")):
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        submit = subprocess.run([EDITPIPE, "submit", str(manifest), "--wait"], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=120)
        assert submit.returncode == 0, submit.stderr
        (tmp_path / "cli.log").write_text(submit.stderr)
        time.sleep(3)  # the last collects' and the finalize's lines
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    job_id = submit.stdout.split()[0]
    every = [*log_files.values(), tmp_path / "cli.log"]
    records = {path.name: read_json_lines(path) for path in every}
    workers = records["worker-0.log"] + records["worker-1.log"]
    assert_runs_named(workers, job_id, runs=8)
    assert any(r["logger"] == "celery.worker.strategy" for r in workers)  # Celery's own lines, as JSON
    assert any("ready." in r["message"] and r["logger"] == "celery.apps.worker" for r in workers)
    assert any(r["logger"] == "workers.beat" and "nightly" in r["message"] for r in records["beat.log"])
    assert any(r["logger"] == "pipeline.cli" and job_id in r["message"] for r in records["cli.log"])
    collected_by_webhook = sim.stats()
    assert collected_by_webhook["webhooks_sent"] > 0, collected_by_webhook
    assert_no_secret(every, [FAKE_KEY, FAKE_SECRET, sim.config.webhook_secret])


def test_editpipe_run_logs_json_lines_in_every_process_without_a_secret(tmp_path, sim):
    sim.configure(api_key=FAKE_KEY)
    manifest = many_runs_manifest(tmp_path, "out", sets=3)
    run = subprocess.run([EDITPIPE, "run", str(manifest)], env=clean_env(sim), cwd=tmp_path, capture_output=True,
                         text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    (tmp_path / "cli.log").write_text(run.stderr)
    worker_logs = sorted((tmp_path / "out" / ".editpipe" / "state" / "logs").glob("worker-*.log"))
    assert worker_logs
    records = [r for path in worker_logs for r in read_json_lines(path)]
    cli = read_json_lines(tmp_path / "cli.log")
    (job_dir,) = (tmp_path / "out" / "jobs").iterdir()
    assert_runs_named(records, job_dir.name, runs=6)
    assert any(r["logger"] == "pipeline.cli" for r in cli)
    assert_no_secret([*worker_logs, tmp_path / "cli.log"], [FAKE_KEY])


def test_a_secret_that_reaches_a_log_line_anyway_is_redacted_in_the_message_and_the_traceback():
    stream = io.StringIO()
    settings = Settings(api_key=SecretStr(FAKE_KEY), webhook_secret=SecretStr(FAKE_SECRET), log_format="json")
    handler = logs.configure(settings, stream=stream)
    try:
        log = logging.getLogger("test.redaction")
        with logs.run_context("job-1", 3, "pred-9"):
            log.warning("the key is %s", FAKE_KEY)
            try:
                raise RuntimeError(f"bad secret {FAKE_SECRET}")
            except RuntimeError:
                log.exception("failed", extra={"header": f"Bearer {FAKE_KEY}"})
        log.info("not about a run")
    finally:
        logging.getLogger().removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [f"the key is {logs.REDACTED}", "failed", "not about a run"]
    assert lines[1]["header"] == f"Bearer {logs.REDACTED}" and logs.REDACTED in lines[1]["exc_info"]
    assert [(line.get("job_id"), line.get("index"), line.get("prediction_id")) for line in lines] == [
        ("job-1", 3, "pred-9"), ("job-1", 3, "pred-9"), (None, None, None)]
    assert FAKE_KEY not in stream.getvalue() and FAKE_SECRET not in stream.getvalue()
