"""Every Redis key editpipe uses, in one place: nothing outside this module spells ``ep:``.

A job is ``ep:job:<id>`` (a hash of counters and facts) plus ``ep:job:<id>:<part>`` for its
per-run hashes and lists; the rest are fleet-wide: the jobs index, the queue of runs waiting
to start, the due index of predictions in flight, budgets, limits, leases and caches.
"""

from __future__ import annotations

PREFIX = "ep"
JOBS = f"{PREFIX}:jobs"  # sorted set: job id -> created (Unix time)
TO_FINALIZE = f"{PREFIX}:to-finalize"  # sorted set: job id -> when its last run finished
DAY_BUDGET_PREFIX = f"{PREFIX}:budget:day:"  # + YYYY-MM-DD: micro-USD held that UTC day
FAIR = f"{PREFIX}:fair"  # the fair queue's prefix (``fair_queue``)
DUE = f"{PREFIX}:due"  # sorted set: due member -> when its next check is due
EPOCH = f"{PREFIX}:epoch"  # when this Redis's records begin (Unix time), set at its first job
# Budget alerts (``alerts``): the outbox of alerts claimed and not yet delivered or given up.
ALERTS = f"{PREFIX}:alerts"  # hash: alert id -> alert record (JSON)
ALERTS_DUE = f"{PREFIX}:alerts:due"  # sorted set: alert id -> when a sender may take it (ms)
ALERTS_HISTORY = f"{PREFIX}:alerts:history"  # list: the newest alerts done with, and how (JSON)
# The metrics (``metrics``): the fleet's counters (runs by outcome, failures by kind, spend,
# polls, webhooks), the settings the workers publish, and one hash per histogram.
METRICS = f"{PREFIX}:metrics"
METRICS_CONFIG = f"{PREFIX}:metrics:config"


def histogram(name: str) -> str:
    """A histogram's bucket counters, sum and count, by label (``metrics``)."""
    return f"{PREFIX}:metrics:hist:{name}"


def job(job_id: str, part: str = "") -> str:
    """The job's hash, or one of its parts (``runs``, ``results``, ``ledger``, ``pred``, ...)."""
    return f"{PREFIX}:job:{job_id}" + (f":{part}" if part else "")


def run_claim(job_id: str, index: int) -> str:
    return job(job_id, f"claim:{index}")


def collect_claim(job_id: str, index: int) -> str:
    return job(job_id, f"collecting:{index}")


def day_budget(day: str) -> str:
    return DAY_BUDGET_PREFIX + day


DAY_SPEND_SUFFIX = ":spend"


def day_spend(day: str) -> str:
    """The UTC day's hash: ``spent`` (micro-USD charged that day, every job together), ``cap``
    (the daily budget the last reservation was held against) and its alerts' claims."""
    return DAY_BUDGET_PREFIX + day + DAY_SPEND_SUFFIX


def fair_queue(prefix: str = FAIR) -> list[str]:
    """The fair queue's ring, jobs hash and requeued hash, in the order its scripts take them."""
    return [f"{prefix}:ring", f"{prefix}:jobs", f"{prefix}:requeued"]


def latency(model: str) -> str:
    return f"{PREFIX}:latency:{model}"


def latency_unknown_since(model: str) -> str:
    """When the oldest prediction of a model whose latency is not known yet was submitted."""
    return f"{PREFIX}:latency:{model}:unknown-since"


def upload(identity: str) -> str:
    return f"{PREFIX}:upload:{identity}"


def upload_lock(identity: str) -> str:
    return f"{PREFIX}:upload-lock:{identity}"


def task_lease(name: str) -> str:
    return f"{PREFIX}:lease:{name}"


def task_kick(name: str) -> str:
    return f"{PREFIX}:kick:{name}"


def schedule(name: str, part: str) -> str:
    """A schedule's ``lock``, ``last`` record or ``history``."""
    return f"{PREFIX}:schedule:{name}:{part}"


def limits(account: str) -> str:
    """The prefix of a provider account's limits (``limit_part`` names what is under it)."""
    return f"{PREFIX}:limits:{account}"


def limit_part(prefix: str, part: str) -> str:
    """``rate``, ``leases``, ``throttle`` or ``counts`` (starts and 429s, for the metrics) of
    an account's limits; ``last`` of a rate."""
    return f"{prefix}:{part}"


def webhook_event(event_id: str) -> str:
    """A provider webhook event's mark: a delivery's token while handled, then ``done``."""
    return f"{PREFIX}:webhook:event:{event_id}"


def webhook_prediction(prediction_id: str) -> str:
    """``done`` once a webhook event of this prediction was handled."""
    return f"{PREFIX}:webhook:prediction:{prediction_id}"


# Lost submit answers (``lost_submits``), account-wide: every submit on the wire or whose
# answer was lost, and the prediction ids runs know, so that a lost answer's prediction is
# told apart from the others the account's list shows.
SUBMITS = f"{PREFIX}:submits"  # hash: run member -> submit record (JSON)
SUBMITS_BY_START = f"{PREFIX}:submits:start"  # sorted set: run member -> start (ms)
GAVE_UP = f"{PREFIX}:submits:gave-up"  # hash: tombstone member -> submit record (JSON)
GAVE_UP_BY_END = f"{PREFIX}:submits:gave-up:end"  # sorted set: tombstone member -> its window's end (ms)
KNOWN_PREDICTIONS = f"{PREFIX}:known-predictions"  # hash: prediction id -> "<job id>#<index>"
KNOWN_AT = f"{PREFIX}:known-predictions:at"  # sorted set: prediction id -> when recorded (ms)
PROVIDER_CLOCK = f"{PREFIX}:provider-clock"  # list: "lo|hi|at" samples of the provider's clock offset (ms)
