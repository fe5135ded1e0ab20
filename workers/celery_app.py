"""The Celery app: Redis as broker, JSON messages, late acks.

Late acks with ``task_reject_on_worker_lost``: a task whose worker dies is delivered again,
and the library functions are written so a second delivery never pays twice.
"""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from pipeline.settings import Settings
from pipeline.state import RIDE_OUT_S

from . import logs, names
from .watchdog import Watchdog

QUEUE = "editpipe"
# Pauses of 0, 0.5, 1, 1.5 and then 2 s: a message is sent as long as the state layer rides
# out an outage (RIDE_OUT_S, 90 s), then the error is raised.
PUBLISH_RETRY = {"max_retries": int(RIDE_OUT_S // 2) + 2, "interval_start": 0, "interval_step": 0.5,
                 "interval_max": 2}


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    broker = settings.redis_url or "redis://localhost:6379/0"
    app = Celery("editpipe", broker=broker, include=["workers.tasks", "workers.schedule_tasks", "workers.alert_tasks"])
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=QUEUE,
        worker_prefetch_multiplier=4,
        broker_connection_retry_on_startup=True,
        # A Redis restart or outage stops no worker (workers/broker.py, workers/consumer.py):
        # kombu's Redis transport fixed to survive it, a consumer that hands back what it
        # held once Redis answers again, a worker that never gives up reconnecting, and
        # messages sent while Redis is away retried as long as the state layer rides it out.
        broker_transport="workers.broker:Transport",
        worker_consumer="workers.consumer:Consumer",
        broker_connection_max_retries=None,
        task_publish_retry_policy=PUBLISH_RETRY,
        # A message not acked within this many seconds is delivered again (its worker died).
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for a dead worker's messages often enough to match the timeout (kombu's
            # default sweeps every ~100 s), and never let a killed sweeper's lock hold them
            # for its default 5 minutes.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_s // 4)),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": 30,
            # A broker that stops answering without closing the socket is noticed.
            "socket_timeout": 30,
            "socket_connect_timeout": 5,
        },
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    # Every worker restarts the work whose lease lapsed with a dead holder (workers.watchdog).
    app.steps["worker"].add(Watchdog)
    # Workers and beat whose own prints keep to EDITPIPE_LOG_FORMAT (workers.logs).
    app.Worker = app.subclass_with_self(logs.Worker)
    app.Beat = app.subclass_with_self(logs.Beat)
    return app


logs.configure_early()
app = make_app()


def job_enqueuer(settings: Settings) -> Callable[[str], None]:
    """A callable that hands a recorded job's runs to the workers of ``settings``' broker."""
    app = make_app(settings)

    def enqueue(job_id: str) -> None:
        app.send_task(names.ENQUEUE_JOB, (job_id,))

    return enqueue


def collect_sender(settings: Settings) -> Callable[[str, int, str, list[str], list[bool] | None], None]:
    """A callable that hands one completed prediction to the workers' ``collect`` task (the
    webhook server's one message), with the provider's nsfw flags for the checks."""
    app = make_app(settings)

    def send(job_id: str, index: int, prediction_id: str, outputs: list[str], nsfw: list[bool] | None = None) -> None:
        app.send_task(names.COLLECT, (job_id, index, prediction_id, outputs, nsfw))

    return send


def runs_enqueuer(settings: Settings) -> Callable[[str, list[int]], None]:
    """A callable that hands chosen runs of a job to the workers again (``resume``)."""
    app = make_app(settings)

    def enqueue(job_id: str, indices: list[int]) -> None:
        app.send_task(names.ENQUEUE_RUNS, (job_id, indices))

    return enqueue
