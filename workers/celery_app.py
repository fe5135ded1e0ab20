"""The Celery app: Redis as broker, JSON messages, late acks.

Late acks with ``task_reject_on_worker_lost``: a task whose worker dies is delivered again,
and the library functions are written so a second delivery never pays twice.
"""

from __future__ import annotations

from celery import Celery

from pipeline.settings import Settings

QUEUE = "editpipe"


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    broker = settings.redis_url or "redis://localhost:6379/0"
    app = Celery("editpipe", broker=broker, include=["workers.tasks"])
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
        # A message not acked within this many seconds is delivered again (its worker died).
        broker_transport_options={"visibility_timeout": int(settings.extra.get("visibility_timeout", 600))},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return app


app = make_app()
