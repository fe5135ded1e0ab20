"""Publish: a finished job's approved outputs copied to its ``publish.to``, idempotently.

Which outputs: with ``review: required``, those whose latest decision is ``approve``; with
``review: auto``, also those this job made whose checks all passed and that nobody rejected
(or asked to regenerate). A person's approval publishes an output whatever its checks said
(they saw them); anything else with a failed check is held back, never deleted or lost.

Where: ``publish.to`` rendered for the run (from its output's sidecar: the names its
``output_key`` had) with the output's extension, under the spec's root; beside it a sidecar
naming the job, the run, the prediction and the source, with the picture's perceptual hashes
(what the next job's ``changed`` check reads in one GET). Two outputs of one job that would
land on one place are both held back, and said so: a person approves one of them.

Idempotent: an output already published by this job (its line in ``published.jsonl``, or the
destination's sidecar naming the same run and prediction, should a publish have died before
writing its line) is not copied again, so a second call copies nothing and a run approved
later is published by the next call. ``published.jsonl`` gets one line per copy, appended
(``Storage.append_text``). Publishing never deletes or unpublishes anything.

Outputs layer: reads the job's records and writes the destination; imports the domain,
``storage``, ``checks`` (the perceptual hashes) and ``review``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .checks import perceptual_hashes
from .errors import ReviewError, StorageError
from .layout import PUBLISHED, REVIEW, job_file, sidecar_key
from .ledger import utc_now
from .manifest.publish import PublishSpec, publish_values
from .records import RunResult, RunStatus
from .review import Decision, has_output, job_results, passed, read_decisions
from .storage import LocalStorage, S3Storage, Storage, content_type_for

log = logging.getLogger(__name__)

COPY_THREADS = 8  # outputs copied at once (below boto3's 10 connections per client)
OpenRoot = Callable[[str], Storage]
Action = Literal["copy", "already", "held"]


@dataclass(frozen=True)
class Item:
    """What publish does (or would do) with one run's output. ``action``: ``copy`` (copied
    now, or to be with ``dry_run``), ``already`` (published before: nothing copied), ``held``
    (not published: ``reason`` says why)."""

    run_key: str
    index: int
    action: Action
    reason: str
    source: str | None = None  # the output's key under the job's root
    key: str | None = None  # its place under the spec's root
    destination: str | None = None  # that place, as a person reads it
    prediction_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"run_key": self.run_key, "index": self.index, "action": self.action, "reason": self.reason,
                "source": self.source, "destination": self.destination, "prediction_id": self.prediction_id}


@dataclass
class Outcome:
    """What one publish did: an item per run with an output, in run order."""

    job_id: str
    spec: PublishSpec
    dry_run: bool
    items: list[Item] = field(default_factory=list)

    def count(self, action: Action) -> int:
        return sum(1 for item in self.items if item.action == action)

    @property
    def copied(self) -> list[Item]:
        return [item for item in self.items if item.action == "copy"]

    def summary(self) -> dict[str, Any]:
        """For ``summary.json`` and a job's notification."""
        return {"to": self.spec.to, "copied": self.count("copy"), "already": self.count("already"),
                "held": self.count("held")}


def job_spec(storage: Storage, job_id: str) -> PublishSpec:
    """The publish block the finished job ran with (kept in its ``summary.json``); a
    ``ReviewError`` for a job that has none."""
    try:
        summary = json.loads(storage.get_text(job_file(job_id, "summary.json")))
    except FileNotFoundError:
        raise ReviewError(f"job {job_id} has no summary under {storage.root}: publish a job once it has "
                          "finished (and name its own output root)") from None
    spec = (summary.get("publish") or {}).get("spec")
    if not spec:
        raise ReviewError(f"job {job_id} has no publish block: nothing to publish (add `publish:` to its "
                          "manifest or schedule)")
    return PublishSpec.from_dict(spec)


def published_log(storage: Storage, job_id: str) -> list[dict[str, Any]]:
    """The lines of the job's ``published.jsonl`` (whole lines only), oldest first."""
    try:
        text = storage.get_text(job_file(job_id, PUBLISHED))
    except FileNotFoundError:
        return []
    complete = text if text.endswith("\n") else text[: text.rfind("\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def eligible(result: RunResult, decision: Decision | None, spec: PublishSpec) -> str | None:
    """Why ``result`` is to be published (``approved by …``, ``checks passed``), or None."""
    if not has_output(result):
        return None
    if decision is not None:
        return f"approved by {decision.reviewer or 'someone'} at {decision.at}" if decision.decision == "approve" \
            else None
    if spec.auto and passed(result, (c.name for c in spec.checks)):
        return "its checks passed (review: auto)"
    return None


def _held_reason(result: RunResult, decision: Decision | None, spec: PublishSpec) -> str:
    if decision is not None:
        return f"{decision.state} by {decision.reviewer or 'someone'}" + (f": {decision.reason}" if decision.reason
                                                                          else "")
    failed = [name for name, found in result.checks.items() if not found.get("passed")]
    if spec.auto and failed:
        return "checks failed: " + "; ".join(f"{name} ({result.checks[name].get('detail')})" for name in failed)
    if spec.auto and result.status is RunStatus.SKIPPED:
        return "made by an earlier job (skipped here): approve it to publish it from this job"
    if spec.auto:
        return "not checked (not collected by this job's workers): approve it to publish it"
    return "waiting for review" + (f" (checks failed: {', '.join(failed)})" if failed else "")


def open_like(storage: Storage) -> OpenRoot:
    """Opens a destination root without settings: an S3 one through ``storage``'s own client
    (same endpoint and credentials), a local folder as it is. A job on a local root cannot
    reach S3 this way (``StorageError``): its callers pass an opener made from settings."""

    def open_root(root: str) -> Storage:
        if not root.startswith("s3://"):
            return LocalStorage(Path(root))
        if isinstance(storage, S3Storage):
            return S3Storage(root, storage.client)
        raise StorageError(f"cannot open {root} from a job on a local root without S3 settings: "
                           "run `editpipe publish JOB --output ROOT`")

    return open_root


def publish_job(storage: Storage, job_id: str, open_root: OpenRoot, *, spec: PublishSpec | None = None,
                results: Sequence[RunResult] | None = None, dry_run: bool = False) -> Outcome:
    """Publish what the job's decisions (and, with ``review: auto``, its checks) let through;
    with ``dry_run``, only say what would be done. ``spec`` and ``results`` default to what
    the job's records hold (finalize passes its own). Raises ``ReviewError`` for a job without
    a publish block or not finished; a destination that cannot be written raises
    ``StorageError`` once the copies made so far are recorded.

    Costs, besides the copies: the job's records (4 GETs), and for each output to publish
    that ``published.jsonl`` does not list, its sidecar and the destination's (2 GETs)."""
    spec = spec or job_spec(storage, job_id)
    results = list(results) if results is not None else job_results(storage, job_id)
    decisions = read_decisions(storage, job_id)
    destination = open_root(spec.root)
    logged = {line.get("run_key"): line for line in published_log(storage, job_id)}
    items: dict[str, Item] = {}
    wanted: list[tuple[RunResult, str]] = []
    for result in results:
        if not has_output(result):
            continue
        decision = decisions.get(result.run_key)
        why = eligible(result, decision, spec)
        line = logged.get(result.run_key)
        if why is None:
            items[result.run_key] = Item(result.run_key, result.index, "held", _held_reason(result, decision, spec),
                                         result.output)
        elif line is not None:
            items[result.run_key] = Item(result.run_key, result.index, "already", "published by an earlier publish of "
                                         "this job", result.output, line.get("key"), line.get("to"),
                                         line.get("prediction_id"))
        else:
            wanted.append((result, why))
    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="publish") as pool:
        for item in pool.map(lambda pair: _place(storage, destination, spec, *pair), wanted):
            items[item.run_key] = item
    _hold_rivals(items)
    outcome = Outcome(job_id, spec, dry_run, sorted(items.values(), key=lambda item: item.index))
    if not dry_run:
        _copy_all(storage, destination, job_id, outcome, {r.run_key: r for r, _ in wanted}, set(logged))
    return outcome


def _hold_rivals(items: dict[str, Item]) -> None:
    """Two outputs of the job bound for one place: the one already there stays; the others
    are held back (a person approves only one of them)."""
    by_key: dict[str, list[Item]] = {}
    for item in items.values():
        if item.action != "held" and item.key is not None:
            by_key.setdefault(item.key, []).append(item)
    for rivals in by_key.values():
        if len(rivals) < 2:
            continue
        names = ", ".join(r.run_key[:12] for r in rivals)
        for item in rivals:
            if item.action == "copy":
                items[item.run_key] = Item(item.run_key, item.index, "held", f"{len(rivals)} approved runs of this "
                                           f"job go to {item.destination} ({names}): approve only one of them",
                                           item.source, item.key, item.destination, item.prediction_id)


def _place(storage: Storage, destination: Storage, spec: PublishSpec, result: RunResult, why: str) -> Item:
    """Where ``result``'s output goes, and whether it is there already (the destination's
    sidecar names the same run and prediction: a publish that died before its line)."""
    assert result.output is not None
    try:
        made = json.loads(storage.get_text(sidecar_key(result.output)))
        values = publish_values(made["image_set"], made["prompt_id"], int(made["variant"]), made.get("options") or {},
                                made.get("vars") or {})
        key = spec.destination_key(values, result.output)
    except FileNotFoundError:
        return Item(result.run_key, result.index, "held", f"its output's sidecar is missing at "
                    f"{storage.location(sidecar_key(result.output))}", result.output)
    except (KeyError, ValueError, TypeError) as exc:
        return Item(result.run_key, result.index, "held", f"no place to publish it: {exc}", result.output)
    prediction_id = made.get("prediction_id") or result.prediction_id
    where = destination.location(key)
    try:
        there = json.loads(destination.get_text(sidecar_key(key)))
    except (FileNotFoundError, ValueError):  # nothing there, or not a sidecar of ours
        there = None
    if isinstance(there, dict) and there.get("run_key") == result.run_key and there.get("prediction_id") == prediction_id:
        return Item(result.run_key, result.index, "already", f"already at {where}", result.output, key, where,
                    prediction_id)
    return Item(result.run_key, result.index, "copy", why, result.output, key, where, prediction_id)


def _copy_all(storage: Storage, destination: Storage, job_id: str, outcome: Outcome,
              results: Mapping[str, RunResult], logged: set[str]) -> None:
    """Copy every ``copy`` item (in parallel), then record in ``published.jsonl`` what was
    copied and what was found there already without a line; a copy that fails raises once
    the others are recorded."""
    to_copy = [item for item in outcome.items if item.action == "copy"]
    found_there = [item for item in outcome.items if item.action == "already" and item.run_key not in logged]
    failures: list[str] = []

    def copy(item: Item) -> dict[str, Any] | None:
        try:
            return _copy_one(storage, destination, job_id, item, results[item.run_key])
        except (StorageError, OSError) as exc:
            failures.append(f"run {item.run_key[:12]} to {item.destination}: {exc}")
            return None

    with ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="publish") as pool:
        lines = [line for line in pool.map(copy, to_copy) if line is not None]
    lines += [_line(job_id, item, "found already published") for item in found_there]
    if lines:
        storage.append_text(job_file(job_id, PUBLISHED),
                            "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in lines),
                            "application/x-ndjson")
    if failures:
        raise StorageError(f"{len(failures)} output(s) not published: {failures[0]}"
                           + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))


def _copy_one(storage: Storage, destination: Storage, job_id: str, item: Item, result: RunResult) -> dict[str, Any]:
    assert item.source is not None and item.key is not None
    data = storage.get_bytes(item.source)
    try:
        hashes = perceptual_hashes(data)
    except Exception:  # noqa: BLE001 - an image Pillow cannot decode is still published; `changed` reads it whole
        hashes = None
    destination.put_bytes(item.key, data, content_type_for(item.key))
    sidecar = {
        "job_id": job_id,
        "run_key": item.run_key,
        "prediction_id": item.prediction_id,
        "source": storage.location(item.source),
        "published_at": utc_now(),
        "why": item.reason,
        "checks": result.checks,
        **({"hashes": hashes} if hashes else {}),
    }
    # The sidecar last: it says the picture beside it is this run's, once the picture is.
    destination.put_text(sidecar_key(item.key), json.dumps(sidecar, indent=2), "application/json")
    log.info("job %s: run %s published to %s", job_id, item.run_key[:12], item.destination)
    return _line(job_id, item, item.reason)


def _line(job_id: str, item: Item, why: str) -> dict[str, Any]:
    """One line of ``published.jsonl``."""
    return {"run_key": item.run_key, "index": item.index, "prediction_id": item.prediction_id,
            "from": item.source, "to": item.destination, "key": item.key, "why": why, "at": utc_now(),
            "job_id": job_id}


def review_waiting(results: Sequence[RunResult], decisions: Mapping[str, Decision]) -> int:
    """How many outputs this job made wait for a person's decision (those it skipped were an
    earlier job's to review: a nightly re-run that changed nothing has none waiting)."""
    return sum(1 for r in results if r.status is RunStatus.SUCCEEDED and r.output and r.run_key not in decisions)


def review_location(storage: Storage, job_id: str) -> str:
    return storage.location(job_file(job_id, REVIEW))


def at_finish(storage: Storage, job_id: str, spec: PublishSpec, results: Sequence[RunResult],
              open_root: OpenRoot) -> dict[str, Any]:
    """What a finished job does about publishing, as its ``summary.json`` (and notification)
    says it: with ``review: auto``, it publishes what passed its checks (a failure is logged
    and said, never fails the job: ``editpipe publish JOB`` tries again); with ``review:
    required``, it says how many outputs wait for review, and where."""
    info: dict[str, Any] = {"spec": spec.to_dict(), "to": spec.to, "review": spec.review}
    decisions = read_decisions(storage, job_id)
    waiting = review_waiting(results, decisions)
    if spec.auto:
        try:
            outcome = publish_job(storage, job_id, open_root, spec=spec, results=results)
        except Exception as exc:  # noqa: BLE001 - publishing never keeps a job from finishing
            log.error("job %s: publishing to %s failed: %s: %s", job_id, spec.to, type(exc).__name__, exc)
            info["error"] = f"{exc}; `editpipe publish {job_id} --output {storage.root}` tries again"
            info["message"] = f"publishing to {spec.to} failed: {exc}"
            return info
        info["published"] = outcome.summary()
        info["message"] = (f"{outcome.count('copy')} output(s) published to {spec.to} ({outcome.count('already')} "
                           f"there already, {outcome.count('held')} held back)")
        return info
    info["waiting_review"] = waiting
    info["review_with"] = f"editpipe review {job_id} --output {storage.root}"
    info["decisions"] = review_location(storage, job_id)
    info["message"] = (f"{waiting} output(s) wait for review: editpipe review {job_id} --output {storage.root}, "
                       f"then editpipe publish {job_id} --output {storage.root}" if waiting
                       else "no output of this job waits for review")
    return info
