"""Regenerate: a rejected run of a job made again as a new variant, paid like any other run.

The new run asks the provider for exactly what the rejected one asked (same model, options,
prompt as sent and inputs) as the next variant of that combination, so it has a run key of
its own and an output key rendered from the job's ``output_key`` template with that variant.
It is added to the same job (``state.Jobs.add_runs``: the job's next run index, the job
reopened when it had finished) and handed to the workers, so everything a run goes through
applies: the account's limits, the job's budget (reserved before the submit; a budget that
cannot cover it fails the run as ``budget exhausted``, and ``editpipe resume JOB
--budget-usd X`` runs it), its line in the job's ledger, and the job's finalize again, whose
``results.jsonl`` and report then hold the new run beside the rejected one.

Each run added is also appended to the job's ``added_runs.jsonl`` in storage before it is
handed out, so a job whose Redis state is lost is rebuilt with its regenerated runs
(``pipeline.recovery``), and their results and ledger lines are kept.

Guaranteed: a run is regenerated at most once, however many reviewers ask at once (the
state layer's script decides); a regenerated run never overwrites an output already stored
(a variant whose output key is taken, under this output root, is passed over); the rejected
run's output, result and decisions are left as they are.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal

import yaml

from .errors import EditpipeError, JobNotFound
from .layout import job_file
from .manifest.schema import DEFAULT_OUTPUT_KEY
from .manifest.template import Template, unsafe_key
from .modelspec import ModelSpec
from .plan import EXTENSIONS, Plan, Run, run_key
from .state import State
from .storage import Storage
from .submission import reopen_mark

EnqueueRuns = Callable[[str, list[int]], None]
ADDED_RUNS = "added_runs.jsonl"  # under jobs/<job_id>/: the runs regenerate added, in order
MAX_VARIANT_TRIES = 1000  # variants passed over (outputs stored already) before giving up on one run


@dataclass(frozen=True)
class Regenerated:
    """One run regenerated: ``source`` (the rejected run's key), the new run's ``run_key``,
    ``index`` and ``output``; ``before``: it had been regenerated already (nothing was added
    now, and ``run_key``/``output`` are those of the run added then)."""

    source: str
    run_key: str
    index: int
    output: str
    variant: int
    before: bool = False


def output_template(storage: Storage, job_id: str) -> Template:
    """The job's ``output_key`` template, from the manifest stored with it."""
    try:
        text = storage.get_text(job_file(job_id, "manifest.yaml"))
    except FileNotFoundError:
        raise JobNotFound(f"job {job_id} has no manifest under {storage.root}") from None
    data = yaml.safe_load(text) or {}
    raw = data.get("output_key", DEFAULT_OUTPUT_KEY) if isinstance(data, dict) else DEFAULT_OUTPUT_KEY
    return Template.parse(raw if isinstance(raw, str) else DEFAULT_OUTPUT_KEY)


def new_output_key(template: Template, run: Run, variant: int) -> str:
    """The output key of ``run``'s variant ``variant``: the job's template rendered as a plan
    renders it. A template without ``{variant}`` would give back the rejected run's own key,
    so ``-v<variant>`` is added to the key's last segment then."""
    values = {**run.options, **run.vars, "image_set": run.image_set, "prompt": run.prompt_id,
              "variant": str(variant)}
    stem = template.render(values)
    if "variant" not in template.names:
        stem = f"{stem}-v{variant}"
    return f"{stem}.{EXTENSIONS[run.options['output_format']]}"


def _same_request(a: Run, b: Run) -> bool:
    return (a.model, a.prompt, a.options, [r.identity for r in a.inputs]) == (
        b.model, b.prompt, b.options, [r.identity for r in b.inputs])


class _Variants:
    """Picks each new run's variant: past every variant of the same request in the job,
    and past any whose run key or output key is taken already."""

    def __init__(self, storage: Storage, template: Template, planned: list[Run]):
        self.storage, self.template, self.planned = storage, template, planned
        self.keys = {run.run_key for run in planned}
        self.outputs = {run.output_key for run in planned}

    def next_run(self, source: Run) -> Run:
        variant = max(run.variant for run in self.planned if _same_request(run, source))
        for _ in range(MAX_VARIANT_TRIES):
            variant += 1
            key = run_key(source.model, source.options, source.prompt, source.inputs, variant)
            output = new_output_key(self.template, source, variant)
            problem = unsafe_key(output)
            if problem is not None:
                raise EditpipeError(f"run {source.run_key}: the output key {output!r} of its variant {variant} "
                                    f"{problem}")
            if key in self.keys or output in self.outputs or self.storage.exists(output):
                continue
            run = Run(index=-1, run_key=key, image_set=source.image_set, prompt_id=source.prompt_id,
                      variant=variant, model=source.model, prompt=source.prompt, options=source.options,
                      inputs=source.inputs, output_key=output, vars=source.vars)
            self.take(run)
            return run
        raise EditpipeError(f"run {source.run_key}: no free output key in {MAX_VARIANT_TRIES} variants")

    def take(self, run: Run) -> None:
        self.keys.add(run.run_key)
        self.outputs.add(run.output_key)
        self.planned.append(run)


def regenerate(state: State, storage: Storage, job_id: str, run_keys: Iterable[str], enqueue_runs: EnqueueRuns,
               ) -> list[Regenerated]:
    """Add a new variant of each run in ``run_keys`` to job ``job_id`` and hand the new runs
    to the workers; see the module's docstring. Which runs may be regenerated (the rejected
    ones) is the caller's to decide; a key that is not one of the job's runs with an output
    is an ``EditpipeError`` and nothing is added."""
    wanted = list(dict.fromkeys(run_keys))
    planned = list(state.runs.planned(job_id))
    if not planned and not state.jobs.known(job_id):
        raise state.jobs.missing(job_id)
    by_key = {run.run_key: run for run in planned}
    with_output = {r["run_key"] for r in state.runs.results(job_id) if r.get("output") and r["status"] != "failed"}
    unknown = [key for key in wanted if key not in by_key]
    if unknown:
        raise EditpipeError(f"job {job_id} has no run {unknown[0]}" + (f" (and {len(unknown) - 1} more)"
                                                                        if len(unknown) > 1 else ""))
    without = [key for key in wanted if key not in with_output]
    if without:
        raise EditpipeError(f"run {without[0]} of job {job_id} has no output to regenerate")
    by_index = {run.index: run for run in planned}
    done = state.jobs.regenerated(job_id)
    variants = _Variants(storage, output_template(storage, job_id), planned)
    out: list[Regenerated] = []
    todo = []
    for key in wanted:
        source = by_key[key]
        if source.index in done:
            out.append(_before(source, by_index[done[source.index]]))
        else:
            todo.append(source)
    added: list[int] = []
    lines: list[str] = []
    while todo:
        candidates = [(source, variants.next_run(source)) for source in todo]
        answers = state.jobs.add_runs(job_id, [(source.index, run) for source, run in candidates])
        todo = []
        for (source, run), answer in zip(candidates, answers):
            if answer.status == "added":
                added.append(answer.index)
                lines.append(json.dumps({"source": source.index, "run": {**run.to_dict(), "index": answer.index}},
                                        separators=(",", ":")) + "\n")
                out.append(Regenerated(source.run_key, run.run_key, answer.index, run.output_key, run.variant))
            elif answer.status == "already":  # another reviewer's regenerate got there first
                out.append(_before(source, state.runs.run(job_id, answer.index)))
            else:  # 'taken': another regenerate added this variant meanwhile; the next one
                todo.append(source)
    if added:
        state.jobs.persist(job_id)  # reopened: a finalized job's expiry no longer applies
        storage.append_text(job_file(job_id, ADDED_RUNS), "".join(lines), "application/x-ndjson")
        reopen_mark(state, storage, job_id)
        enqueue_runs(job_id, sorted(added))
    return out


def with_added_runs(storage: Storage, job_id: str, plan: Plan) -> Plan:
    """``plan`` (the job's manifest planned again) with the runs regenerate added to the job,
    in the order they were added, as the plan's next indices (``ADDED_RUNS``)."""
    try:
        text = storage.get_text(job_file(job_id, ADDED_RUNS))
    except FileNotFoundError:
        return plan
    stored = sorted((json.loads(line)["run"] for line in text.splitlines() if line.strip()),
                    key=lambda run: run["index"])
    known = set(plan.keys())
    extra = [Run.from_dict({**run, "index": len(plan.runs) + n})
             for n, run in enumerate(r for r in stored if r["run_key"] not in known)]
    # A plan with added runs is a list of runs (each stored on its own), not a blueprint.
    return replace(plan, runs=[*plan.runs, *extra]) if extra else plan


def _before(source: Run, run: Run) -> Regenerated:
    return Regenerated(source.run_key, run.run_key, run.index, run.output_key, run.variant, before=True)


def price_of(runs: Iterable[Regenerated], planned: Mapping[str, Run], specs: Mapping[str, ModelSpec]) -> Decimal:
    """What the runs added now cost if each completes once (what was added before is not counted)."""
    return sum((specs[planned[r.source].model].price_for(planned[r.source].options) for r in runs if not r.before),
               Decimal("0"))
