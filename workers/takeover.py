"""What ``editpipe run`` asks of the broker when it starts on the Redis of a run that died.

The dead workers' messages wait in the broker's ``unacked`` set (a task with ``acks_late`` is
acknowledged only when it has run; a countdown's message is held by its worker until it is
due). The broker hands them back only after the visibility timeout, 600 s by default, which
is right while other workers may still be running them. When the embedded run's lock proves
that none is, ``restore_unacked`` puts them all back in the queue at once; the tasks are
written so that a second delivery never pays twice. ``wake`` then sets the job moving:
its runs handed to the pumps again (a job already known to the queue keeps its cursor, so
this only kicks the pumps), and the poller started for the predictions in flight.
"""

from __future__ import annotations

from pipeline.settings import Settings

from . import names
from .celery_app import make_app


def restore_unacked(settings: Settings) -> int:
    """Put every delivered, unacknowledged message back in its queue; returns how many.

    Only for a broker that no live worker consumes from (the caller proves it): a live
    worker's message would run twice at once."""
    app = make_app(settings)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        client = channel.client
        tags = client.zrange(channel.unacked_index_key, 0, -1)
        for tag in tags:
            channel.qos.restore_by_tag(tag, client)
    return len(tags)


def wake(settings: Settings, job_id: str, *, pumps_directly: bool) -> None:
    """Get a continued job's runs moving again.

    ``ENQUEUE_JOB`` registers the job's runs with the pumps if it never was (a run killed
    before its workers took it), or, for a job the queue knows, changes nothing and kicks the
    pumps; the poller is started for the predictions in flight. With ``pumps_directly`` (a
    Redis shared with workers that may have died holding the pumps' leases) each pump is sent
    too: it waits for a dead holder's lease to lapse, then takes it."""
    app = make_app(settings)
    app.send_task(names.ENQUEUE_JOB, (job_id,))
    app.send_task(names.POLLER)
    if pumps_directly:
        for slot in range(settings.pumps):
            app.send_task(names.PUMP, (slot,))
