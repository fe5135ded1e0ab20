"""Flower's source: a worker started as the compose stack starts it (``-E``) sends Celery's
task events over the same broker, through editpipe's own Redis transport, and a receiver on
that broker (what Flower runs) sees every task of a job succeed."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections import Counter

from conftest import AWS_ENV, ROOT, many_runs_manifest
from pipeline.embedded import worker_env
from pipeline.report import finalize_job
from pipeline.state import State
from pipeline.submission import follow, prepare, submit
from workers.celery_app import job_enqueuer, make_app


def test_a_worker_started_with_task_events_shows_every_task_to_an_event_receiver(settings, sim, workers, tmp_path,
                                                                                  bucket):
    app = make_app(settings)
    seen: Counter[str] = Counter()
    names: dict[str, str] = {}
    ready = threading.Event()

    def on_event(event: dict) -> None:
        if event["type"] == "task-received":
            names[event["uuid"]] = event["name"]
        elif event["type"] == "task-succeeded" and event["uuid"] in names:
            seen[names[event["uuid"]]] += 1

    with app.connection() as connection:
        receiver = app.events.Receiver(connection, handlers={"*": on_event})
        consume = threading.Thread(target=lambda: (ready.set(), receiver.capture(limit=None, timeout=None)),
                                   daemon=True)
        consume.start()
        ready.wait(5)
        env = {**worker_env(settings), **AWS_ENV, "S3_ENDPOINT_URL": settings.s3_endpoint_url or ""}
        log = open(tmp_path / "worker.log", "ab")
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "workers", "worker", "-E", "--loglevel", "INFO", "--concurrency", "2",
             "-n", f"events-{uuid.uuid4().hex[:6]}@%h"],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            state = State.from_url(settings.redis_url or "")
            manifest = many_runs_manifest(tmp_path, f"s3://{bucket}/out", sets=3)
            job_id = submit(prepare(manifest, settings), state, job_enqueuer(settings), finalize=finalize_job)
            assert follow(state, job_id, lambda s: None, interval_s=0.2, timeout_s=90).done
            deadline = threading.Event()
            for _ in range(50):  # the last events may trail the job's end by a moment
                if seen["editpipe.finalize"] == 1:
                    break
                deadline.wait(0.1)
        finally:
            receiver.should_stop = True
            worker.terminate()
            worker.wait(timeout=30)
    assert seen["editpipe.enqueue_job"] == 1 and seen["editpipe.finalize"] == 1, seen
    assert seen["editpipe.pump"] >= 1 and seen["editpipe.collect_runs"] >= 1, seen
