"""Execution: the steps of one run, from reference images to a charged, stored output.

Each step is a plain function over a ``Context`` and returns what should happen next
(``Next``); the Celery tasks in ``workers/`` only schedule that. Waiting on the provider
never blocks: a submitted run is polled by short tasks scheduled with a growing countdown
(at least 2 s apart, as the provider asks), so a worker slot is held only while a request
is on the wire.

No double pay: a run's prediction id is stored the moment the submit answers, and every
later delivery of the run polls that prediction instead of submitting again.
A prediction the provider fails for now (``failures.classify``: not billed) is given up in
one atomic step and its run started again through the same start path, after a backoff.
A submit whose answer was lost is looked for among the account's recent predictions before
the run is submitted again (``adoption``); every submit is recorded account-wide while on
the wire (``State.lost``) so that the look can tell its prediction from the others.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Literal

from . import adoption
from .callbacks import callback_url
from .checks import check_output
from .errors import (
    AuthFailed,
    EditpipeError,
    ProviderError,
    ProviderTransient,
    RateLimited,
    RunRejected,
    StorageError,
    SubmitUnconfirmed,
    UploadInProgress,
)
from .failures import ErrorKind, classify
from .layout import sidecar_key
from .ledger import LedgerEntry, LineKind, to_micros, usd, utc_now
from .limits import AccountLimits
from .modelspec import ModelSpec, load_model_specs
from .plan import Run
from .provider import Prediction, WaveSpeedClient
from .records import RunResult, RunStatus, Sidecar
from .run_index import index_line, write_batch_if_due
from .settings import Settings
from .state import BUDGET_EXHAUSTED, RunState, State
from .storage import Storage, open_storage, presigned_get
from .thumbnails import output_thumbnail

log = logging.getLogger(__name__)
UPLOAD_TTL_S = 6 * 24 * 3600  # the provider keeps uploads 7 days
COLLECT_CLAIM_S = 30  # a collector that dies lets the next check collect after this
PAUSED_RETRY_S = 2.0  # how often a paused job's run is offered again
LOST_ANSWER = (
    "the submit's answer was lost{how} and its prediction could not be told apart from others in the "
    "account's recent predictions: the provider may have billed it (an unconfirmed_submit line in the "
    "ledger); `editpipe resume` submits it again"
)


@dataclass
class Context:
    """What a worker process needs to execute runs; built once per process."""

    settings: Settings
    state: State
    client: WaveSpeedClient
    specs: dict[str, ModelSpec]
    limits: AccountLimits | None = None
    _storages: dict[str, Storage] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> "Context":
        if not settings.redis_url:
            raise EditpipeError("REDIS_URL is not set")
        state = State.from_url(settings.redis_url)
        return cls(
            settings=settings,
            state=state,
            limits=AccountLimits.from_settings(state.limits, settings),
            client=WaveSpeedClient(
                settings.base_url, settings.require_api_key(), timeout_s=settings.request_timeout_s
            ),
            specs=load_model_specs(settings.models_dir),
        )

    def free_slot(self, job_id: str, index: int) -> None:
        """The run's prediction is over (or was never accepted): give its slot back now."""
        if self.limits is not None:
            self.limits.finished(slot_holder(job_id, index))

    def storage(self, root: str) -> Storage:
        if root not in self._storages:
            self._storages[root] = open_storage(root, self.settings)
        return self._storages[root]


@dataclass(frozen=True)
class Next:
    """What the caller schedules after a step.

    ``done``: nothing more for this run. ``submit``: try the submit again after ``delay_s``.
    ``wait``: the account's limits said not yet: hand the run out again after ``delay_s``.
    ``poll``: check the prediction after ``delay_s``. ``collect``: the prediction completed;
    store its ``outputs``. ``finalize``: this run was the job's last; finalize the job.
    """

    action: Literal["done", "submit", "wait", "poll", "collect", "finalize"]
    delay_s: float = 0.0
    failures: int = 0
    prediction: Prediction | None = None


DONE = Next("done")
Admit = Callable[[str], float]


def slot_holder(job_id: str, index: int) -> str:
    """The name a run's prediction holds its concurrency slot under."""
    return f"{job_id}:{index}"


def start_claim_s(settings: Settings) -> int:
    """How long a run's start claim lasts: longer than the longest submit."""
    return int(settings.request_timeout_s) + 5


def backoff_s(failures: int, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter, or the provider's Retry-After when it gave one."""
    if retry_after is not None:
        return retry_after + random.uniform(0, 1)
    return min(60.0, 2.0 ** min(failures, 6)) * random.uniform(0.5, 1.5)


def poll_interval_s(settings: Settings, attempt: int) -> float:
    """First check at ``poll_initial_s``, then 1.5 times longer each time, capped."""
    return min(settings.poll_max_s, settings.poll_initial_s * (1.5**attempt))


def request_payload(run: Run, images: list[str]) -> dict:
    return {"images": images, "prompt": run.prompt, **run.options}


def fail_run(ctx: Context, job_id: str, run: Run, error: str, prediction_id: str | None = None, *,
             kind: ErrorKind, code: int | None = None, retryable: bool = False, not_started: bool = False) -> Next:
    """Finish a run as failed, saying why in ``kind`` (and the provider's failure ``code``, if
    any); its budget reservation and slot (if any) go back first."""
    ctx.state.budget.release(job_id, run.index)
    ctx.free_slot(job_id, run.index)
    result = RunResult.of(run, RunStatus.FAILED, prediction_id=prediction_id, error=error, retryable=retryable,
                          not_started=not_started, error_kind=kind, code=code)
    finished = ctx.state.runs.finish_run(job_id, run.index, outcome=RunStatus.FAILED, result=result.to_dict())
    return Next("finalize") if finished.last else DONE


def charge_lost_answer(ctx: Context, job_id: str, run: Run, attempt: int, price: Decimal) -> None:
    """Put a submit whose answer was lost in the ledger, at the price it may have cost."""
    entry = LedgerEntry(
        prediction_id=None,
        run_key=run.run_key,
        job_id=job_id,
        model=run.model,
        cost_usd=price,
        charged_at=utc_now(),
        kind=LineKind.UNCONFIRMED_SUBMIT,
    )
    ctx.state.budget.charge_unconfirmed(job_id, run.index, f"unconfirmed:{run.index}:{attempt}", entry.to_dict(),
                                to_micros(price))


def _uploaded_url(ctx: Context, path: str, identity: str) -> str:
    """The provider URL of a local file's content, uploading it once across all workers."""
    uploads = ctx.state.uploads
    url = uploads.url(identity)
    if url is not None:
        return url
    if not uploads.lock(identity):
        raise UploadInProgress(path)
    try:
        url = ctx.client.upload(Path(path))
        uploads.remember(identity, url, UPLOAD_TTL_S)
        return url
    finally:
        uploads.unlock(identity)


def prepare_inputs(ctx: Context, run: Run) -> list[str]:
    """URLs the provider can fetch: local files are uploaded once per content hash (the
    upload URL is reused while the provider keeps it), ``s3://`` objects are presigned."""
    urls = []
    for ref in run.inputs:
        if ref.kind == "local":
            urls.append(_uploaded_url(ctx, ref.uri, ref.identity))
        elif ref.kind == "s3":
            urls.append(presigned_get(ref.uri, ctx.settings))
        else:
            urls.append(ref.uri)
    return urls


def start_run(ctx: Context, job_id: str, index: int, *, token: str, failures: int = 0,
              admit: Admit | None = None) -> Next:
    """Submit one run, unless it is finished, already submitted, or its job stopped.

    In order: claim the run (one execution at a time), look for the prediction of an earlier
    submit whose answer was lost, hand it back while its job is paused, reserve its price
    against the budgets, ask ``admit`` (the account's limits: 0 = go, else seconds to wait),
    mark the submit as on the wire, submit, and store the prediction id at once.
    """
    jobs, runs = ctx.state.jobs, ctx.state.runs
    # A delivery that finds the claim taken (another one is submitting, or died doing so)
    # looks again once it has expired.
    claim = runs.claim_start(job_id, index, token, start_claim_s(ctx.settings))
    if claim.state == "finished":
        return DONE
    if claim.state == "submitted":
        return Next("poll")  # a redelivery: resume the prediction already paid for
    if claim.state == "taken":
        return Next("submit", claim.taken_s + random.uniform(0.5, 1.5), failures)
    run = claim.run
    spec = ctx.specs[run.model]
    price = spec.price_for(run.options)
    if claim.submit_open:
        # An earlier submit's answer was lost (or its worker died with it on the wire): look
        # for its prediction before paying for another (``adoption``).
        looked, failures = _look_for_lost_answer(ctx, job_id, run, claim.attempts, price, failures, token)
        if looked is not None:
            return looked
    stop = claim.stop_reason
    # A run whose price was reserved before the budget ran out still goes: that money was
    # set aside for it (it was only waiting for the account's limits).
    if stop and not (stop.startswith(BUDGET_EXHAUSTED) and claim.reserved):
        kind = ErrorKind.BUDGET_EXHAUSTED if stop.startswith(BUDGET_EXHAUSTED) else ErrorKind.NOT_STARTED
        return fail_run(ctx, job_id, run, f"not started: {stop}", kind=kind, retryable=True, not_started=True)
    if claim.paused:
        # An `editpipe run` stopping cleanly: the run goes back to the queue untouched (nothing
        # reserved, nothing uploaded) and starts once the pause is lifted or lapses.
        runs.release_claim(job_id, index, token)
        return Next("wait", PAUSED_RETRY_S, failures)
    day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    held = ctx.state.budget.reserve(job_id, index, price, day=day, day_cap=ctx.settings.daily_budget_usd)
    if held < 0:
        status = jobs.status(job_id)
        reason = (
            f"{BUDGET_EXHAUSTED}: the job's budget of ${usd(status.budget_usd or Decimal(0))} is used up"
            if held == -1
            else f"{BUDGET_EXHAUSTED}: the daily budget of ${usd(ctx.settings.daily_budget_usd or Decimal(0))} "
            f"for {day} (UTC) is used up"
        )
        jobs.stop(job_id, reason)
        jobs.flag(job_id, BUDGET_EXHAUSTED)
        return fail_run(ctx, job_id, run, f"not started: {jobs.stop_reason(job_id)}",
                        kind=ErrorKind.BUDGET_EXHAUSTED, retryable=True, not_started=True)
    jobs.mark_running(job_id)
    try:
        images = prepare_inputs(ctx, run)
    except UploadInProgress:
        runs.release_claim(job_id, index, token)
        return Next("submit", random.uniform(0.5, 1.5), failures)
    except ProviderTransient as exc:
        runs.release_claim(job_id, index, token)
        return _retry_submit(ctx, job_id, run, exc, failures)
    except AuthFailed as exc:
        return _stop_job(ctx, job_id, run, exc)
    except (ProviderError, StorageError, OSError) as exc:
        storage_failed = isinstance(exc, StorageError)
        return fail_run(ctx, job_id, run, f"reference image: {exc}", retryable=storage_failed,
                        kind=ErrorKind.STORAGE if storage_failed else ErrorKind.MEDIA_UNREACHABLE)

    if admit is not None:
        wait = admit(slot_holder(job_id, index))
        if wait > 0:
            runs.release_claim(job_id, index, token)
            return Next("wait", wait, failures)
    attempt = runs.begin_submit(job_id, index, token)
    if attempt == 0:
        # The claim lapsed under this step (Redis was away longer than it) and may be
        # another's: submitting now could pay twice. Look again shortly, as a new start.
        return Next("submit", random.uniform(0.5, 1.5), failures)
    ctx.state.lost.on_wire(job_id, index, attempt, run.model, start_claim_s(ctx.settings) + 10)
    try:
        prediction = ctx.client.submit(spec.endpoint, request_payload(run, images), run_key=run.run_key,
                                       webhook=callback_url(ctx.settings, job_id, index))
    except RateLimited as exc:
        # Not a failure of the run: the whole fleet slows down, and the run waits its turn.
        ctx.state.lost.settled(job_id, index)
        runs.release_claim(job_id, index, token)
        ctx.free_slot(job_id, index)
        pause = ctx.limits.rate_limited(exc.retry_after, str(exc)) if ctx.limits else backoff_s(failures, exc.retry_after)
        return Next("wait", pause, failures)
    except SubmitUnconfirmed:
        # Looked for in the account's recent predictions shortly (the start after this one,
        # ``claim.submit_open``); the slot and the reservation stay with the run meanwhile.
        ctx.state.lost.lost(job_id, index)
        runs.release_claim(job_id, index, token)
        return Next("submit", adoption.LOOKS_AT_S[0], failures)
    except ProviderError as exc:
        if isinstance(exc, ProviderTransient) and (exc.status or 0) >= 500 and ctx.state.lost.lost(job_id, index):
            # A 5xx without a prediction id: the provider may still have made (and will bill)
            # one, so as it asks, it is looked for before the run is submitted again.
            runs.release_claim(job_id, index, token)
            return Next("submit", adoption.LOOKS_AT_S[0], failures)
        ctx.state.lost.settled(job_id, index)
        if isinstance(exc, ProviderTransient):
            runs.release_claim(job_id, index, token)
            ctx.free_slot(job_id, index)
            return _retry_submit(ctx, job_id, run, exc, failures)
        if isinstance(exc, AuthFailed):
            return _stop_job(ctx, job_id, run, exc)
        kind = ErrorKind.BAD_INPUT if isinstance(exc, RunRejected) else ErrorKind.PROVIDER_ERROR
        return fail_run(ctx, job_id, run, str(exc), kind=kind)
    ctx.state.lost.answered(job_id, index, prediction.id, adoption.created_ms(prediction))
    log.info("run %s of %s: submitted, prediction %s", index, job_id, prediction.id,
             extra={"prediction_id": prediction.id})
    return Next("poll", ctx.settings.poll_initial_s)


def _look_for_lost_answer(ctx: Context, job_id: str, run: Run, attempts: int, price: Decimal,
                          failures: int, token: str) -> tuple[Next | None, int]:
    """What follows one look for a lost submit answer's prediction; None when the provider
    made none and the run is to be submitted now (with ``failures`` counted). Until the look
    settles, the run keeps its slot and its reservation: the prediction may exist and run."""
    index = run.index
    try:
        found = adoption.look(ctx.state, ctx.client, job_id, index,
                              ambiguous_for_s=adoption.LOOKS_AT_S[-1] + start_claim_s(ctx.settings))
    except AuthFailed as exc:
        charge_lost_answer(ctx, job_id, run, attempts, price)
        return _stop_job(ctx, job_id, run, exc), failures
    if found.outcome == "adopted":
        return Next("poll"), failures
    if found.outcome == "look_again":
        ctx.state.runs.release_claim(job_id, index, token)
        if ctx.limits is not None:
            ctx.limits.heartbeat(slot_holder(job_id, index))
        return Next("submit", found.delay_s, failures), failures
    if found.outcome == "ambiguous":
        # Not told apart from another's: it was most likely made and billed, and another
        # submit would surely be. Booked as possibly paid; a person resumes it.
        charge_lost_answer(ctx, job_id, run, attempts, price)
        return fail_run(ctx, job_id, run, LOST_ANSWER.format(how=" with its worker" if found.with_worker else ""),
                        kind=ErrorKind.LOST_ANSWER, retryable=True), failures
    if found.outcome == "nothing":
        if failures + 1 > ctx.settings.max_transient_retries:
            return fail_run(ctx, job_id, run, f"gave up after {failures + 1} lost submit answers",
                            kind=ErrorKind.LOST_ANSWER, retryable=True), failures
        failures += 1
    ctx.state.runs.end_submit(job_id, index)
    ctx.free_slot(job_id, index)  # the provider made nothing: submitted again, as any start
    return None, failures


def _stop_job(ctx: Context, job_id: str, run: Run, exc: AuthFailed) -> Next:
    """The key was rejected: no run of this job can be paid for; stop submitting them."""
    ctx.state.jobs.stop(job_id, str(exc))
    ctx.state.jobs.set_error(job_id, str(exc))
    return fail_run(ctx, job_id, run, str(exc), kind=ErrorKind.AUTH, retryable=True, not_started=True)


def _retry_submit(ctx: Context, job_id: str, run: Run, exc: ProviderTransient, failures: int) -> Next:
    """Try a submit again later. A 429 never counts against the run; other transient errors
    do, up to ``max_transient_retries``. The budget reservation is kept meanwhile."""
    if isinstance(exc, RateLimited):
        return Next("submit", backoff_s(failures, exc.retry_after), failures)
    if failures + 1 > ctx.settings.max_transient_retries:
        return fail_run(ctx, job_id, run, f"gave up after {failures + 1} transient errors; last: {exc}",
                        kind=ErrorKind.PROVIDER_ERROR, retryable=True, not_started=True)
    return Next("submit", backoff_s(failures + 1, exc.retry_after), failures + 1)


def poll_run(ctx: Context, job_id: str, index: int, *, attempt: int = 0, failures: int = 0,
             state: RunState | None = None) -> Next:
    """Check a submitted run's prediction once; collect it when it is done. ``state``: the
    run's state if the caller read it already (a poller reads a batch's in one go)."""
    jobs = ctx.state.jobs
    finished, prediction_id = state or ctx.state.runs.states([(job_id, index)])[0]
    if finished:
        return DONE
    run = ctx.state.runs.run(job_id, index)
    if prediction_id is None:
        # Its failed prediction was given up (``_prediction_failed``) by a check that died
        # before it filed the new start, or it was never submitted: start it (the start
        # claim and the submit marks see to it that nothing is submitted twice).
        return Next("submit", 0.0)
    try:
        prediction = ctx.client.result(prediction_id)
        if not prediction.terminal:
            return Next("poll", poll_interval_s(ctx.settings, attempt), failures)
        if prediction.failed:
            return _prediction_failed(ctx, job_id, run, prediction)
        # Its slot is given back once the output is stored (``_store_and_charge``), so that
        # the predictions paid for and not yet stored never pass the concurrency cap: the
        # bound on what a Redis that lost its data may have paid twice (``recovery``).
        return Next("collect", prediction=prediction)
    except ProviderTransient as exc:
        if failures + 1 > ctx.settings.max_transient_retries and not isinstance(exc, RateLimited):
            return fail_run(ctx, job_id, run, f"gave up after {failures + 1} transient errors; last: {exc}",
                            prediction_id, kind=ErrorKind.PROVIDER_ERROR, retryable=True)
        bump = 0 if isinstance(exc, RateLimited) else 1
        return Next("poll", max(2.0, backoff_s(failures + bump, exc.retry_after)), failures + bump)
    except (AuthFailed, RunRejected, ProviderError) as exc:
        auth = isinstance(exc, AuthFailed)
        if auth:
            jobs.stop(job_id, str(exc))
            jobs.set_error(job_id, str(exc))
        return fail_run(ctx, job_id, run, str(exc), prediction_id, retryable=auth,
                        kind=ErrorKind.AUTH if auth else ErrorKind.PROVIDER_ERROR)


def _prediction_failed(ctx: Context, job_id: str, run: Run, prediction: Prediction) -> Next:
    """The provider ended the run's prediction without an output (not billed). A transient
    failure (``failures.classify``) is submitted again after a backoff, as a new start of
    the run through the due index, the start claim, the limits and the budget, like any
    other; a permanent one, or one past ``max_transient_retries`` failed predictions, ends
    the run ``failed``.

    The prediction id is forgotten, and the failure counted, in one step that only the first
    check to see this prediction failed takes (``Runs.drop_failed_prediction``); a check that
    dies after it leaves a run without a prediction, which its next check starts (see
    ``poll_run``). The run's budget reservation is kept for the new submit (nothing was
    charged); its concurrency slot is given back until the new submit takes one."""
    failure = classify(prediction.status, prediction.code, prediction.error)
    reason = failure.reason
    if not failure.transient:
        return fail_run(ctx, job_id, run, reason, prediction.id, kind=failure.kind, code=failure.code)
    most = ctx.settings.max_transient_retries
    failed = ctx.state.runs.drop_failed_prediction(job_id, run.index, prediction.id, most)
    if failed == 0:
        return DONE  # another check of this run saw it first and settled it
    if failed > most:
        return fail_run(ctx, job_id, run, f"gave up after {failed} failed predictions; last: {reason}", prediction.id,
                        kind=failure.kind, code=failure.code, retryable=True)
    ctx.free_slot(job_id, run.index)
    log.info("run %s of %s: prediction %s failed (%s); submitting it again (%d of %d)", run.index, job_id,
             prediction.id, reason, failed, most)
    return Next("submit", backoff_s(failed))


def collect(ctx: Context, job_id: str, index: int, prediction: Prediction) -> Next:
    """Store the output and its sidecar, then charge and finish the run in one atomic step."""
    run = ctx.state.runs.claim_collect(job_id, index, COLLECT_CLAIM_S)
    if run is None:
        return DONE  # collected already, or being collected (a webhook and a poll both saw it)
    try:
        return _store_and_charge(ctx, job_id, run, prediction)
    except BaseException:
        ctx.state.runs.release_collect(job_id, index)  # let the retry (or the next check) collect it
        raise


def _store_and_charge(ctx: Context, job_id: str, run: Run, prediction: Prediction) -> Next:
    if not prediction.outputs:
        return fail_run(ctx, job_id, run, "the provider completed the edit but returned no output", prediction.id,
                        kind=ErrorKind.PROVIDER_ERROR)
    data = ctx.client.download(prediction.outputs[0])
    output_root = ctx.state.jobs.output_root(job_id)
    storage = ctx.storage(output_root)
    spec = ctx.specs[run.model]
    cost = spec.price_for(run.options)
    storage.put_bytes(run.output_key, data)
    thumbnail = output_thumbnail(storage, job_id, run.index, run.output_key, data)
    checks = check_output(ctx.state.jobs, ctx.storage, job_id, run, data, prediction.nsfw)  # never raises
    sidecar = Sidecar(run, job_id, prediction.id, cost)
    storage.put_text(sidecar_key(run.output_key), json.dumps(sidecar.to_dict(), indent=2), "application/json")
    entry = LedgerEntry(
        prediction_id=prediction.id,
        run_key=run.run_key,
        job_id=job_id,
        model=run.model,
        cost_usd=cost,
        charged_at=utc_now(),
    )
    result = RunResult.of(run, RunStatus.SUCCEEDED, output=run.output_key, prediction_id=prediction.id, cost_usd=cost,
                          thumbnail=thumbnail, checks=checks)
    finished = ctx.state.runs.finish_run(
        job_id,
        run.index,
        outcome=RunStatus.SUCCEEDED,
        result=result.to_dict(),
        ledger_line=entry.to_dict(),
        cost_micros=to_micros(cost),
        index_line=index_line(run.run_key, run.output_key),
    )
    ctx.free_slot(job_id, run.index)
    log.info("run %s of %s: succeeded, prediction %s stored at %s ($%s)", run.index, job_id, prediction.id,
             run.output_key, usd(cost), extra={"prediction_id": prediction.id})
    write_batch_if_due(ctx.state.index, storage, job_id, finished.index_pending, finished.index_waited_s)
    return Next("finalize") if finished.last else DONE
