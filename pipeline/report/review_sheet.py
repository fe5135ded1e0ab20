"""The review page's contact sheet: every run of a job as a card a reviewer decides on.

A card is the run's inputs → its output (the report's thumbnails when they were made, the
full images otherwise), the prompt as sent, its options, its checks (``passed`` and
``detail`` per check, as collect recorded them) and, for a regenerated run, which run it
was made for. The runs come from Redis when it knows the job (so regenerated runs show up,
and their outputs as they are collected), else from the job's ``results.jsonl`` and the
outputs' sidecars in storage (``review.job_results``: a job not finished there is a
``ReviewError``). Decisions are not read here (``pipeline.review``).

Pictures are named by storage key; the page's server hands out exactly the keys a card
names (``ReviewSheet.media``), through the storage, so reviewing works the same on S3 and
on a local output root.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..layout import input_thumb_key, job_file, job_prefix, output_thumb_key, thumbs_prefix
from ..plan import Run
from ..ledger import usd
from ..records import RunResult
from ..review import job_results
from ..run_index import read_sidecars
from ..state import State
from ..storage import Storage
from .sheet import input_name, varying_options

MAX_INPUTS_SHOWN = 3


@dataclass
class ReviewSheet:
    """A job as the review page shows it: ``job`` (name, status, counts, spend), ``runs``
    (one card dict each, in run order) and ``media`` (the storage keys the cards name)."""

    job: dict[str, Any]
    runs: list[dict[str, Any]]
    results: list[RunResult] = field(default_factory=list)  # with their index: what decisions are checked against
    media: set[str] = field(default_factory=set)


def _stored_summary(storage: Storage, job_id: str) -> dict:
    try:
        return json.loads(storage.get_text(job_file(job_id, "summary.json")))
    except FileNotFoundError:
        return {}


def load_sheet(storage: Storage, job_id: str, state: State | None = None) -> ReviewSheet:
    """The job's cards; from Redis when ``state`` knows the job, else from storage."""
    if state is not None and state.jobs.known(job_id):
        status = state.jobs.status(job_id)
        results = [RunResult.from_dict(line) for line in state.runs.results(job_id)]
        planned = {run.index: run for run in state.runs.planned(job_id)}
        regenerated = state.jobs.regenerated(job_id)
        job = status.to_dict()
    else:
        results = job_results(storage, job_id)
        planned = {}
        regenerated = {}
        job = _stored_summary(storage, job_id) or {"job_id": job_id, "name": job_id, "status": "finished"}
    return _sheet(storage, job_id, job, {r.index: r for r in results}, planned, regenerated)


def _sheet(storage: Storage, job_id: str, job: dict, results: dict[int, RunResult], planned: dict[int, Run],
           regenerated: dict[int, int]) -> ReviewSheet:
    prefix = job_prefix(job_id)
    thumbs = set(storage.list_keys(thumbs_prefix(prefix)))
    # Without the planned runs (Redis forgot the job), the prompt as sent is in each sidecar.
    sidecars = {} if planned else read_sidecars(storage, [r.output for r in results.values() if r.shown_output])
    option_names = varying_options(list(results.values()))
    source_of = {new: old for old, new in regenerated.items()}
    key_of = {index: run.run_key for index, run in planned.items()}
    key_of.update({index: r.run_key for index, r in results.items()})
    sheet = ReviewSheet(job=job, runs=[], results=[results[i] for i in sorted(results)])
    for index in sorted(set(planned) | set(results)):
        run = planned.get(index)
        result = results.get(index)
        card = _card(index, run, result, option_names)
        if run is not None:
            card["inputs"] = [_input(sheet, prefix, thumbs, ref) for ref in run.inputs[:MAX_INPUTS_SHOWN]]
            card["more_inputs"] = max(0, len(run.inputs) - MAX_INPUTS_SHOWN)
        elif result is not None and result.shown_output:
            sidecar = sidecars.get(result.output or "") or {}
            card["prompt_sent"] = sidecar.get("prompt")
            card["inputs"] = [{"src": None, "name": str(i.get("uri", "")).rsplit("/", 1)[-1]}
                              for i in (sidecar.get("inputs") or [])[:MAX_INPUTS_SHOWN]]
        if result is not None and result.shown_output:
            card["output"] = result.output
            sheet.media.add(result.output or "")
            thumb = result.thumbnail or output_thumb_key(prefix, index)
            card["thumb"] = thumb if thumb == result.output or thumb in thumbs or result.thumbnail else result.output
            sheet.media.add(card["thumb"])
        if index in source_of:
            card["regenerated_from"] = key_of.get(source_of[index])
        if index in regenerated:
            card["regenerated_as"] = key_of.get(regenerated[index])
        sheet.runs.append(card)
    return sheet


def _card(index: int, run: Run | None, result: RunResult | None, option_names: list[str]) -> dict:
    """A card's facts: from the run's result once it has one, else from the planned run."""
    if result is not None:
        run_key, image_set, prompt, variant, options = (result.run_key, result.image_set, result.prompt,
                                                        result.variant, result.options)
    else:
        assert run is not None
        run_key, image_set, prompt, variant, options = run.run_key, run.image_set, run.prompt_id, run.variant, run.options
    checks = result.checks if result is not None else {}
    return {
        "index": index,
        "n": index + 1,
        "run_key": run_key,
        "image_set": image_set,
        "prompt": prompt,
        "variant": variant,
        "options": {name: str(options[name]) for name in option_names if name in options},
        "prompt_sent": run.prompt if run is not None else None,
        "status": result.status.value if result is not None else "running",
        "error": result.error if result is not None else None,
        "cost_usd": usd(result.cost_usd) if result is not None else None,
        "checks": {name: {"passed": bool(c.get("passed")), "detail": str(c.get("detail") or "")}
                   for name, c in checks.items() if isinstance(c, dict)},
        "output": None,
        "thumb": None,
        "inputs": [],
        "more_inputs": 0,
    }


def _input(sheet: ReviewSheet, prefix: str, thumbs: set[str], ref) -> dict:
    thumb = input_thumb_key(prefix, ref)
    if thumb in thumbs:
        sheet.media.add(thumb)
        return {"src": thumb, "name": input_name(ref)}
    return {"src": None, "name": input_name(ref)}
