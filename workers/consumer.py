"""The worker's consumer: what happens to the messages a worker holds when Redis goes away.

When its broker connection breaks, a Celery worker forgets the messages it had fetched but
not started (prefetched, or waiting for their countdown) and expects the transport to hand
them back to the queue as the old channel closes. With Redis restarting, that hand-back
fails (nothing answers), so the messages would stay in the broker's unacked set until the
visibility timeout (600 s) returns them: a stall of ten minutes for a restart of seconds.

``Consumer`` does two things about it:

- as the connection breaks, the messages of tasks still running are kept out of the
  hand-back: they run to their end and are acknowledged as usual (``workers.broker`` keeps
  the old channel able to reach Redis again), so they are not delivered a second time while
  they run;
- once connected again, whatever the old channel could not hand back goes back to the
  queue, from where any worker takes it (a countdown message keeps its countdown).

While Redis is away the consumer tries to connect again every second at first, then at most
every ``RECONNECT_MAX_S`` (Celery's default grows to 30 s, which left workers idle up to
16 s after a 60 s outage ended), and says so once rather than at every attempt.

Every task tolerates a second delivery (the library's steps check before they act), so a
message handed back twice, in a race with its worker, costs a little work, never a payment.
Selected with ``worker_consumer`` (``workers.celery_app``).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker import state
from celery.worker.consumer import Consumer as CeleryConsumer

log = logging.getLogger(__name__)
RECONNECT_MAX_S = 5.0


class Consumer(CeleryConsumer):
    """Celery's consumer, handing a broken connection's messages back once Redis answers."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._orphaned: list[Any] = []  # the QoS of channels whose messages are not handed back yet

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        qos = _task_qos(self.connection)
        if qos is not None:
            running = _running_tags()
            qos._flush()
            for tag in running:
                qos._delivered.pop(tag, None)  # acknowledged by its task, never handed back
            self._orphaned.append(qos)
        super().on_connection_error_after_connected(exc)

    def ensure_connected(self, conn: Any) -> Any:
        ensure = conn.ensure_connection
        said: list[bool] = []

        def report_once(exc: Exception, interval: float) -> None:
            if not said:
                said.append(True)
                log.warning("Redis at %s:%s (the broker) is not answering (%s); reconnecting every %.0f s "
                            "at most", conn.hostname, conn.port, exc, RECONNECT_MAX_S)

        def ensure_quickly(errback: Any = None, max_retries: Any = None, **options: Any) -> Any:
            options.update(interval_start=1, interval_step=1, interval_max=RECONNECT_MAX_S)
            return ensure(report_once, max_retries, **options)

        conn.ensure_connection = ensure_quickly  # how Celery's reconnect loop is retried
        return super().ensure_connected(conn)

    def connect(self) -> Any:
        conn = super().connect()
        if self._orphaned:
            self._hand_back(conn)
        return conn

    def _hand_back(self, conn: Any) -> None:
        """Put the messages the broken connections held back in the queue (each once)."""
        qos = conn.default_channel.qos
        running = _running_tags()
        handed = 0
        for old in list(self._orphaned):
            old._flush()
            for tag in [t for t in old._delivered if t not in running]:
                try:
                    qos.restore_by_tag(tag)
                except conn.connection_errors:
                    log.warning("Redis stopped answering while messages were handed back; "
                                "the rest go back after the next reconnect")
                    return
                old._delivered.pop(tag, None)
                handed += 1
            self._orphaned.remove(old)
        if handed:
            log.info("handed %d message(s) held when the broker connection broke back to the queue", handed)


def _task_qos(connection: Any) -> Any:
    """The QoS (the unacknowledged messages) of the channel the task consumer used, if any."""
    channel = getattr(connection, "_default_channel", None)
    return getattr(channel, "_qos", None)


def _running_tags() -> set[str]:
    """Delivery tags of the tasks running in this worker now."""
    tags = set()
    for request in tuple(state.active_requests):
        message = getattr(request, "message", None)
        if message is not None:
            tags.add(message.delivery_tag)
    return tags
