"""Callbacks: the URL a submit gives the provider to POST its finished prediction to.

Each URL names one run (``run=<job_id>:<index>``) and carries a token signed with
``EDITPIPE_WEBHOOK_SECRET``, so a POST cannot make editpipe collect anything it did not
submit. Pure: signing and checking only; the server that receives the POSTs is
``pipeline.webhooks``.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from .settings import Settings


def run_token(secret: str, job_id: str, index: int) -> str:
    return hmac.new(secret.encode(), f"{job_id}:{index}".encode(), hashlib.sha256).hexdigest()[:32]


def callback_url(settings: Settings, job_id: str, index: int) -> str | None:
    """The URL the provider calls back for one run, or None when webhooks are off."""
    if not settings.webhook_url or settings.webhook_secret is None:
        return None
    token = run_token(settings.webhook_secret.get_secret_value(), job_id, index)
    return f"{settings.webhook_url}?run={quote(job_id, safe='')}:{index}&token={token}"


def checked_run(secret: str, run: str, token: str) -> tuple[str, int] | None:
    """The ``(job_id, index)`` a callback's ``run`` and ``token`` name, or None unless the
    token is the one ``callback_url`` signed for that run."""
    job_id, _, raw_index = run.rpartition(":")
    if not raw_index.isdigit() or not hmac.compare_digest(token, run_token(secret, job_id, int(raw_index))):
        return None
    return job_id, int(raw_index)
