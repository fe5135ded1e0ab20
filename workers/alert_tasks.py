"""The task that sends the budget alerts waiting in the outbox (``pipeline.alerts``).

A watchdog (``workers.watchdog``) sends it when an alert is due, marked as kicked for a few
seconds so that a fleet's watchdogs send one; several may run at once all the same (each
takes its own alerts from the outbox, never another's).
"""

from __future__ import annotations

from pipeline.alerts import send_due

from . import names
from .celery_app import app
from .tasks import context
from .watchdog import ALERTS_KICK


@app.task(name=names.SEND_ALERTS)
def send_alerts() -> None:
    ctx = context()
    ctx.state.tasks.kicked(ALERTS_KICK)
    send_due(ctx.state.alerts, ctx.settings)
