"""Plans: a validated manifest turned into the ordered list of runs a job will pay for.

This module alone says which runs a manifest means:

- without ``runs``, every image set × every prompt; with ``runs``, exactly the listed pairs;
- each pair is crossed with ``matrix`` values, except on the axes its prompt or run entry
  sets itself (those pin one value, so the axis collapses rather than repeating a run);
- options resolve run > prompt > matrix > defaults > model spec defaults; ``model`` and
  ``variants`` resolve run > prompt > defaults;
- each run's output key is ``output_key`` rendered with its options, its image set's vars,
  ``image_set``, ``prompt`` and ``variant``.

``pair_runs`` walks those pairs, ``count_runs`` counts their runs without building them, and
``plan_runs`` plans them: it identifies every input once and returns the plan's
``blueprint`` (``pipeline.blueprint``), from which runs are built as they are read. The manifest's checks walk the same pairs to judge output keys,
so that the keys checked are exactly those a plan writes.

Each run carries a ``run_key``, the sha256 of what the provider is asked to do: the model,
every resolved request option, the prompt as sent, the inputs by content identity, and the
variant number. Equal requests get equal keys in any process on any day, which is what lets
a job skip runs already done; the key never depends on the output root, the manifest name
or the run's position.

A plan holds its image sets, prompts and option sets, never its runs: a million-run plan
costs what its feed costs. Runs are light when built: slotted, and the runs of one image
set share its inputs and vars, the runs of one option set share its options. ``Run``,
``InputRef`` and ``run_key`` live in ``pipeline.run`` and are re-exported here.

Domain layer: imports ``modelspec``, ``run`` and ``blueprint``; the manifest's types are
named for type checkers alone (``pipeline.manifest`` imports this module to check output keys).
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from .blueprint import Blueprint, Group, PlannedRuns, SetPart
from .modelspec import DEFAULT_MODEL, ModelSpec
from .run import EXTENSIONS, InputRef, Run, run_key

__all__ = ["EXTENSIONS", "InputRef", "Plan", "PlannedRuns", "Run", "count_runs", "plan_runs", "run_key"]

if TYPE_CHECKING:
    from .manifest import AnyImageSet, Defaults, Manifest, Prompt, RunSpec

_CHUNK = 1 << 20


def image_kind(ref: str) -> Literal["local", "s3", "https"]:
    """How an image reference is fetched; ``https`` covers ``http://`` too."""
    if ref.startswith("s3://"):
        return "s3"
    if ref.startswith(("https://", "http://")):
        return "https"
    return "local"


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a catalog or plan is built.

    A 100,000-row feed becomes hundreds of thousands of dicts, tuples and runs in one go;
    each allocation burst would make the collector walk the growing heap again. None of
    these objects can form a cycle, so there is nothing for it to find; it resumes, if it
    was on, when the block ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(frozen=True)
class Plan:
    """The runs of one manifest, in order, and the catalog rows it skipped (``file:line:col:
    field: message`` each, as ``on_bad_row: skip`` asks).

    ``runs`` is a ``PlannedRuns`` from ``plan_runs`` (built as they are read, from the
    plan's ``blueprint``), or any list of runs."""

    manifest_name: str
    runs: Sequence[Run]
    skipped_rows: list[str] = field(default_factory=list)

    @property
    def blueprint(self) -> Blueprint | None:
        return self.runs.blueprint if isinstance(self.runs, PlannedRuns) else None

    def keys(self) -> Iterator[str]:
        """Every run key in plan order (from the blueprint, without building the runs)."""
        bp = self.blueprint
        return bp.keys() if bp is not None else (run.run_key for run in self.runs)

    def keys_and_outputs(self) -> Iterator[tuple[str, str]]:
        """``(run key, output key)`` of every run in plan order."""
        bp = self.blueprint
        return bp.keys_and_outputs() if bp is not None else ((run.run_key, run.output_key) for run in self.runs)

    def estimated_cost(self, specs: Mapping[str, ModelSpec]) -> Decimal:
        """What the whole plan costs if every run completes (only completed runs are billed)."""
        return self.cost_where(specs)

    def cost_where(self, specs: Mapping[str, ModelSpec], left_out: Callable[[int], bool] | None = None) -> Decimal:
        """What the plan's runs cost if each completes once, but those whose position
        ``left_out`` is true for (runs done already, say)."""
        bp = self.blueprint
        if bp is None:
            return self.cost_of((r for i, r in enumerate(self.runs) if left_out is None or not left_out(i)), specs)
        prices = bp.prices(specs)
        if left_out is None:
            return sum(prices, Decimal(0))
        return sum((price for i, price in enumerate(prices) if not left_out(i)), Decimal(0))

    def cost_of(self, runs: Iterable[Run], specs: Mapping[str, ModelSpec]) -> Decimal:
        """What ``runs`` cost if each completes once."""
        return sum((specs[run.model].price_for(run.options) for run in runs), Decimal(0))


# --- Which runs a manifest means -----------------------------------------------------------


class PairRuns(NamedTuple):
    """An image set × prompt pair and what its runs share: each of ``option_sets`` (shared
    with the other pairs of the prompt, read only) is run ``variants`` times."""

    image_set: AnyImageSet
    prompt: Prompt
    entry: RunSpec | None
    model: str
    variants: int
    option_sets: list[dict[str, str]]


def model_of(defaults: Defaults, prompt: Prompt, entry: RunSpec | None = None) -> str:
    """The model of a prompt's runs (in run ``entry``, if any): run > prompt > defaults."""
    return (entry and entry.model) or prompt.model or defaults.model or DEFAULT_MODEL


def variants_of(defaults: Defaults, prompt: Prompt, entry: RunSpec | None = None) -> int:
    """How many variants each option set of the pair gets: run > prompt > defaults > 1."""
    return (entry and entry.variants) or prompt.variants or defaults.variants or 1


def pairs(manifest: Manifest) -> Iterator[tuple[AnyImageSet, Prompt, RunSpec | None]]:
    """Image set × prompt pairs in plan order, with the run entry that named each (if any)."""
    if manifest.runs is None:
        for image_set in manifest.image_sets:
            for prompt in manifest.prompts:
                yield image_set, prompt, None
        return
    sets, prompts = manifest.sets_by_id, manifest.prompts_by_id
    for entry in manifest.runs:
        yield sets[entry.image_set], prompts[entry.prompt], entry


def _pinned(prompt: Prompt, entry: RunSpec | None) -> dict[str, str]:
    return {**prompt.options, **(entry.options if entry else {})}


def option_sets(
    manifest: Manifest, prompt: Prompt, entry: RunSpec | None, specs: Mapping[str, ModelSpec]
) -> list[dict[str, str]]:
    """Every resolved option set for one pair, in matrix order (pinned axes collapsed)."""
    spec = specs.get(model_of(manifest.defaults, prompt, entry))
    pinned = _pinned(prompt, entry)
    base = {**(spec.defaults() if spec else {}), **manifest.defaults.options}
    axes = [(name, values) for name, values in manifest.matrix.items() if name not in pinned]
    return [
        {**base, **dict(zip([name for name, _ in axes], combo)), **pinned}
        for combo in itertools.product(*(values for _, values in axes))
    ]


def pair_runs(manifest: Manifest, specs: Mapping[str, ModelSpec]) -> Iterator[PairRuns]:
    """Each image set × prompt pair in plan order, with what its runs share.

    The option sets of one prompt (or run entry) are the same dicts for every pair it is
    in, for the whole iteration: read only, and their ids name them while it lasts.
    """
    defaults = manifest.defaults
    groups: dict[tuple[int, int], tuple[str, int, list[dict[str, str]]]] = {}
    for image_set, prompt, entry in pairs(manifest):
        group_key = (id(prompt), id(entry))
        if group_key not in groups:
            groups[group_key] = (
                model_of(defaults, prompt, entry),
                variants_of(defaults, prompt, entry),
                option_sets(manifest, prompt, entry, specs),
            )
        yield PairRuns(image_set, prompt, entry, *groups[group_key])


def render_output_keys(manifest: Manifest, pair: PairRuns, options: Mapping[str, str]) -> list[str]:
    """The output keys (without extension) of the pair's runs with ``options``, one per
    variant in order; raises ``KeyError`` for a name the template uses and they lack."""
    image_set = pair.image_set
    values = {**options, **image_set.vars, "image_set": image_set.id, "prompt": pair.prompt.id}
    template = manifest.output_template
    keys = []
    for variant in range(1, pair.variants + 1):
        values["variant"] = str(variant)
        keys.append(template.render(values))
    return keys


def count_runs(manifest: Manifest) -> int:
    """How many runs ``plan_runs`` gives for ``manifest``, by arithmetic over its pairs,
    matrix and variants, without building a run (or reading an input)."""
    defaults = manifest.defaults

    def per_pair(prompt: Prompt, entry: RunSpec | None) -> int:
        pinned = _pinned(prompt, entry)
        combos = math.prod(len(values) for name, values in manifest.matrix.items() if name not in pinned)
        return combos * variants_of(defaults, prompt, entry)

    if manifest.runs is None:
        return len(manifest.image_sets) * sum(per_pair(prompt, None) for prompt in manifest.prompts)
    prompts = manifest.prompts_by_id
    return sum(per_pair(prompts[entry.prompt], entry) for entry in manifest.runs)



class _Identities:
    """Input identities, each computed once per plan however many runs share the input."""

    def __init__(self, manifest: Manifest, s3_etag: Callable[[str], str] | None):
        self._manifest = manifest
        self._s3_etag = s3_etag
        self._refs: dict[str, InputRef] = {}

    def of_set(self, image_set: AnyImageSet) -> SetPart:
        """The set as its runs need it: its inputs identified."""
        known = self._refs
        inputs = tuple(known[ref] if ref in known else self._add(ref) for ref in image_set.images)
        return SetPart.of(image_set.id, inputs, image_set.vars)

    def _add(self, ref: str) -> InputRef:
        added = self._refs[ref] = self._identify(ref)
        return added

    def _identify(self, ref: str) -> InputRef:
        kind = image_kind(ref)
        if kind == "https":
            return InputRef(ref, kind, ref)
        if kind == "s3":
            listed = self._manifest.s3_etags.get(ref)
            if listed is not None:
                return InputRef(ref, kind, f"etag:{listed}")
            if self._s3_etag is None:
                raise ValueError(f"{ref} is in S3: planning needs an s3_etag lookup to identify it")
            # S3 sends ETags quoted; the quotes are transport, not identity.
            etag = self._s3_etag(ref).strip('"')
            return InputRef(ref, kind, f"etag:{etag}")
        path = self._manifest.local_path(ref)
        return InputRef(str(path), kind, f"sha256:{_file_sha256(path)}")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def plan_runs(
    manifest: Manifest,
    specs: Mapping[str, ModelSpec],
    s3_etag: Callable[[str], str] | None = None,
) -> Plan:
    """Every run of ``manifest``, in plan order: ``pair_runs``, each pair's option sets in
    matrix order, then variants. The runs are a ``PlannedRuns``: built as they are read from
    the plan's blueprint (each input identified here, once), so a plan of a million runs
    holds its image sets and prompts, not a million runs.

    ``s3_etag(uri)`` returns an s3 object's ETag; it is required when an input is in S3 and
    the manifest's catalog listing did not give it (``ValueError`` otherwise). Deterministic:
    the same manifest and input bytes give the same runs and keys.
    """
    with gc_paused():
        blueprint = _blueprint(manifest, specs, s3_etag)
    return Plan(manifest_name=manifest.name, runs=PlannedRuns(blueprint), skipped_rows=list(manifest.skipped_rows))


def _group(manifest: Manifest, prompt: Prompt, model: str, variants: int, sets: list[dict[str, str]]) -> Group:
    return Group(prompt.id, manifest.prompt_template(prompt).source, model, variants, tuple(sets))


def _blueprint(manifest: Manifest, specs: Mapping[str, ModelSpec], s3_etag: Callable[[str], str] | None) -> Blueprint:
    identities = _Identities(manifest, s3_etag)
    template = manifest.output_template.source
    if manifest.runs is None:
        # Every set × every prompt: the groups are the prompts', the sets all of them.
        defaults = manifest.defaults
        groups = [_group(manifest, prompt, model_of(defaults, prompt), variants_of(defaults, prompt),
                         option_sets(manifest, prompt, None, specs)) for prompt in manifest.prompts]
        sets = [identities.of_set(image_set) for image_set in manifest.image_sets] if groups else []
        return Blueprint(groups, template, len(sets), sets.__getitem__)
    # A runs list: the sets it names, once each, and one group per distinct entry.
    sets = []
    set_pos: dict[int, int] = {}
    groups = []
    group_pos: dict[str, int] = {}  # by content: entries that resolve alike share a group
    pairs_: list[tuple[int, int]] = []
    for pair in pair_runs(manifest, specs):
        if id(pair.image_set) not in set_pos:
            set_pos[id(pair.image_set)] = len(sets)
            sets.append(identities.of_set(pair.image_set))
        group = _group(manifest, pair.prompt, pair.model, pair.variants, pair.option_sets)
        content = json.dumps(group.stored(), sort_keys=True)
        key = group_pos.get(content)
        if key is None:
            key = group_pos[content] = len(groups)
            groups.append(group)
        pairs_.append((set_pos[id(pair.image_set)], key))
    return Blueprint(groups, template, len(sets), sets.__getitem__, pairs_)
