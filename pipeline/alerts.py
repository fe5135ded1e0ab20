"""Alerts: a POST for each budget threshold crossed (50, 80, 100 % of a job's, a schedule's
or the UTC day's budget), sent once.

The crossing is claimed where spend is recorded, in the charge's own atomic Redis step, so
neither a second worker nor a redelivered task claims it again (``pipeline.state.alerts``).
This module sends what was claimed: ``send_due`` takes the due alerts from the outbox for
``HOLD_S`` and POSTs each to its URL:
- a job's or a schedule's alert: the job's ``notify`` URL, else ``EDITPIPE_ALERT_URL``;
- a day's alert: ``EDITPIPE_ALERT_URL``, else the ``notify`` URL of the job whose charge
  crossed it (the day is the whole fleet's: the operator's URL comes first).

Each POST is retried by ``pipeline.notify`` (transport errors, timeouts, 5xx and 429, four
tries over about 10 s; a 4xx is final). An alert the webhook refused or that failed every try
is given up for good: logged as an error, kept in the outbox's history with outcome
``failed``, never sent again. One with no URL at all is logged and recorded ``no_url``.

Each alert is POSTed once (its retries aside), but for one case: a sender that dies after
its POST reached the webhook and before it recorded so leaves the alert to be taken again
once its hold lapses (``HOLD_S``), and sent again. Each POST carries the alert's stable id
(the body's ``alert_id`` and the ``Idempotency-Key`` header) for the receiver to drop such a
repeat. An alert whose senders died ``MAX_TAKES`` times is given up.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any

from .ledger import from_micros, usd
from .notify import notify, safe_target
from .settings import Settings
from .state import AlertRecord, Alerts

log = logging.getLogger(__name__)
# Longer than the longest send of one batch: notify's four tries of at most 10 s each and
# its waits (1 + 2 + 4 s, and jitter), for each alert of a batch.
BATCH = 4
HOLD_S = BATCH * 60.0
MAX_TAKES = 3  # a sender died with it this many times: give it up rather than loop


def body(alert: AlertRecord) -> dict[str, Any]:
    """What the webhook receives: which budget, the threshold, what was spent and is left."""
    remaining = max(0, alert.budget_micros - alert.spent_micros)
    return {
        "event": "budget_alert",
        "alert_id": alert.alert_id,
        "budget": alert.budget,
        "id": alert.id,
        "job_id": alert.job_id,
        "threshold_pct": alert.threshold,
        "budget_usd": usd(from_micros(alert.budget_micros)),
        "spent_usd": usd(from_micros(alert.spent_micros)),
        "remaining_usd": usd(from_micros(remaining)),
        "crossed_at": datetime.fromtimestamp(alert.claimed_ms / 1000, timezone.utc)
        .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


def target(alert: AlertRecord, settings: Settings) -> str | None:
    """The URL an alert goes to (see the module's docstring), or None when there is none."""
    if alert.budget == "day":
        return settings.alert_url or alert.notify_url or None
    return alert.notify_url or settings.alert_url or None


def send_due(alerts: Alerts, settings: Settings, *, initial_wait_s: float = 1.0) -> int:
    """Send every alert due now, a batch at a time; returns how many were delivered.
    Never raises for a webhook's fault (only for Redis's)."""
    delivered = 0
    while batch := alerts.take(HOLD_S, most=BATCH):
        for alert in batch:
            delivered += _send(alerts, settings, alert, initial_wait_s)
    return delivered


def _send(alerts: Alerts, settings: Settings, alert: AlertRecord, initial_wait_s: float) -> bool:
    what = f"budget alert {alert.alert_id} ({alert.budget} {alert.id}: {alert.threshold}%)"
    context = {"job_id": alert.job_id, "alert_id": alert.alert_id}
    if alert.takes > MAX_TAKES:
        log.error("%s: given up, its senders stopped %d times while sending it", what, alert.takes - 1,
                  extra=context)
        alerts.done(alert.alert_id, "failed")
        return False
    url = target(alert, settings)
    if url is None:
        log.warning("%s: no URL to send it to (the job has no notify URL and EDITPIPE_ALERT_URL is not set)",
                    what, extra=context)
        alerts.done(alert.alert_id, "no_url")
        return False
    sent = notify(url, body(alert), initial_wait_s=initial_wait_s, headers={"Idempotency-Key": alert.alert_id})
    alerts.done(alert.alert_id, "delivered" if sent else "failed")
    if sent:
        log.info("%s: sent to %s", what, safe_target(url), extra=context)
    else:
        log.error("%s: not delivered to %s; given up (not sent again)", what, safe_target(url), extra=context)
    return sent
