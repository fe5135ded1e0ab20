"""Webhook events seen: the provider's event ids (and their predictions) already handled, so
a replayed webhook is refused.

``ep:webhook:event:<id>`` holds a delivery's token while that delivery handles the event
(``HANDLING_S`` at most, so a server killed mid-way blocks nothing for long), then ``done``;
``ep:webhook:prediction:<id>`` says ``done`` once a webhook of that prediction had it collected.
Both ``done`` marks live ``SEEN_S``, far beyond the 300 s a signed timestamp is accepted
for: a replay of a captured webhook is either stale or still remembered. An event is marked
done only after it was handled, so the provider's retry after an answer of "try later"
(Redis away, the broker away) is taken as new. One script (``webhook_event.lua``) per step,
so two deliveries of one event never both begin.
"""

from __future__ import annotations

import uuid
from enum import Enum

from . import keys
from .connection import Connection

HANDLING_S = 60
SEEN_S = 24 * 3600


class Begun(str, Enum):
    NEW = "new"  # this delivery handles the event (``done`` or ``drop`` it after)
    SEEN = "seen"  # the event was handled already, or its prediction collected through another
    BUSY = "busy"  # another delivery of the event is being handled now


class WebhookEvents:
    """Which provider webhook events were handled (by event id, and by prediction id)."""

    def __init__(self, conn: Connection):
        self._script = conn.script("webhook_event.lua")

    def begin(self, event_id: str, prediction_id: str) -> tuple[Begun, str]:
        """Whether this delivery of ``event_id`` is the one to handle it, and its token."""
        token = uuid.uuid4().hex
        answer = self._call("begin", event_id, prediction_id, token, HANDLING_S * 1000)
        return Begun(answer), token

    def done(self, event_id: str, prediction_id: str, collected: bool) -> None:
        """The event was handled: it is refused from now on, and so is every event of its
        prediction when it had the prediction ``collected``."""
        self._call("done", event_id, prediction_id, "", SEEN_S, "1" if collected else "0")

    def drop(self, event_id: str, prediction_id: str, token: str) -> None:
        """Handling failed: a later delivery of the event is new again."""
        self._call("drop", event_id, prediction_id, token, 0)

    def _call(self, operation: str, event_id: str, prediction_id: str, token: str, span: int,
              *more: str) -> str:
        return self._script(
            keys=[keys.webhook_event(event_id), keys.webhook_prediction(prediction_id)],
            args=[operation, token, span, *more],
        )
