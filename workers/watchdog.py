"""The watchdog: every worker starts again, within seconds, the work whose holder died.

A worker bootstep (``Watchdog``, registered by ``workers.celery_app.make_app``) puts a timer
in the worker's main process: at start, then every ``TICK_S``, it asks the state layer in
one round trip (``TaskLeases.watch``) what waits with no live lease holder, and sends the
message that starts it:
- runs in the fair queue and a pump slot whose lease is not held: that ``pump``;
- a prediction due within the next tick and the poller's lease not held: the ``poller``;
- a job whose last run finished ``FINALIZE_AFTER_S`` ago and is still not finalized: its
  ``finalize``;
- a budget alert claimed and not yet sent (nor held by a live sender): ``send_alerts``
  (a second question, asked every tick: ``Alerts.kick_sender``).
A dead holder's lease lapses by itself (13 s, ``workers.tasks.LEASE_S``), so from a SIGKILL
to the work going on elsewhere takes at most that lease, a tick and a message; whatever the
dead worker held unacknowledged waits for the broker's visibility timeout and, delivered
again, finds its work done. The same look marks each start as kicked (``KICK_S``), so a
fleet's watchdogs send one message for it, and a kick lost with a dead worker is sent again
once its short mark lapses.

The timer never stops and never takes the worker down: an error (Redis away, the broker
refusing a message) is logged once, with its plain reason, and the next tick tries again.
"""

from __future__ import annotations

import logging

from celery import bootsteps

from pipeline.errors import EditpipeError
from pipeline.settings import Settings
from pipeline.state import State

from . import names

log = logging.getLogger(__name__)
TICK_S = 2.0
KICK_S = 5.0  # a kick mark's life: a start on its way is not sent twice within it
FINALIZE_AFTER_S = 20.0  # a finalize queued behind other work usually runs within this
FINALIZE_KICK_S = 60.0  # a job's finalize is sent again at most this often
ALERTS_KICK = "alerts"  # the kick mark of the budget alerts' sender (workers.alert_tasks)


class Watchdog(bootsteps.StartStopStep):
    """The worker step that runs ``tick`` on the worker's timer (see the module's docstring)."""

    requires = ("celery.worker.components:Timer", "celery.worker.components:Pool")

    def __init__(self, worker, **kwargs):
        super().__init__(worker, **kwargs)
        self._entries: list = []
        self._state: State | None = None
        self._pumps = 0
        self._failing = False

    def start(self, worker) -> None:
        self._app = worker.app
        self._entries = [worker.timer.call_after(0.0, self.tick),
                         worker.timer.call_repeatedly(TICK_S, self.tick)]

    def stop(self, worker) -> None:
        for entry in self._entries:
            entry.cancel()
        self._entries = []

    def tick(self) -> None:
        """One look, and the starts it calls for; never raises."""
        try:
            started = self._look()
        except Exception as exc:  # noqa: BLE001 - the timer must outlive any fault
            if not self._failing:
                log.warning("watchdog: cannot look for work without a taker (%s: %s); trying again every %.0f s",
                            type(exc).__name__, exc, TICK_S)
            self._failing = True
            return
        if self._failing:
            log.info("watchdog: looking for work without a taker again")
        self._failing = False
        for what in started:
            log.info("watchdog: started %s (work waits and its lease is not held)", what)

    def _look(self) -> list[str]:
        if self._state is None:
            settings = Settings.from_env()
            if not settings.redis_url:
                raise EditpipeError("REDIS_URL is not set")
            self._state, self._pumps = State.from_url(settings.redis_url), settings.pumps
        waiting = self._state.tasks.watch(self._pumps, kick_s=KICK_S, due_within_s=TICK_S,
                                          finalize_after_s=FINALIZE_AFTER_S, finalize_kick_s=FINALIZE_KICK_S)
        started = []
        for slot in waiting.pumps:
            self._app.send_task(names.PUMP, (slot,))
            started.append(f"pump {slot}")
        if waiting.poller:
            self._app.send_task(names.POLLER)
            started.append("the poller")
        for job_id in waiting.finalize:
            self._app.send_task(names.FINALIZE, (job_id,))
            started.append(f"the finalize of {job_id}")
        if self._state.alerts.kick_sender(ALERTS_KICK, KICK_S):
            self._app.send_task(names.SEND_ALERTS)
            started.append("the budget alerts' sender")
        return started
