"""How big a manifest's plan is, by arithmetic alone: how many runs, what they cost if each
completes, and the dimensions that multiply into them.

``size_of`` reads the manifest's lists (image sets, prompts, run entries, matrix, variants)
and the model specs' price rules; it builds no run, renders no key and lists no option set
per run, so a manifest of 1.6 billion runs is sized as fast as one of ten. Its count equals
``len(plan_runs(...).runs)`` and its cost ``Plan.estimated_cost`` for any manifest that
plans (tests/test_plan.py). The cap on runs per job is judged against it before anything is
expanded (``pipeline.manifest``), and ``editpipe plan`` prints it before planning.

Domain layer: imports ``modelspec`` and ``plan`` (which runs a manifest means).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from .modelspec import ModelSpec
from .plan import model_of, variants_of

if TYPE_CHECKING:
    from .manifest import Manifest, Prompt, RunSpec

# Runs one job may have unless the manifest (max_runs) or EDITPIPE_MAX_RUNS says otherwise.
DEFAULT_MAX_RUNS = 1_000_000

DocPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Dimension:
    """One factor of a plan's size: ``count`` things (``what``) written at ``path``."""

    path: DocPath
    what: str
    count: int

    def __str__(self) -> str:
        return f"{self.count:,} {self.what}"


@dataclass(frozen=True)
class Size:
    """A plan's size: ``runs``, their cost if each completes (None when a model they use has
    no spec), and the ``dimensions`` written in the manifest that multiply into them (a
    prompt or run entry that pins a matrix option collapses that axis, and variants may
    differ by prompt, so their product is an upper bound of ``runs``)."""

    runs: int
    usd: Decimal | None
    dimensions: tuple[Dimension, ...]

    @property
    def largest(self) -> Dimension | None:
        """The dimension that multiplies most (the first of equals), None when none does."""
        largest = max(self.dimensions, key=lambda d: d.count, default=None)
        return largest if largest is not None and largest.count > 1 else None


def size_of(manifest: Manifest, specs: Mapping[str, ModelSpec]) -> Size:
    """The size of ``manifest``'s plan; run entries naming an unknown prompt count for
    nothing (they are an issue of their own)."""
    runs, usd = 0, Decimal(0)
    priced = True
    if manifest.runs is None:
        groups = [(prompt, None, len(manifest.image_sets)) for prompt in manifest.prompts]
    else:
        by_id = manifest.prompts_by_id
        groups = [(by_id[e.prompt], e, 1) for e in manifest.runs if e.prompt in by_id]
    for prompt, entry, times in groups:
        group_runs, group_usd = _group(manifest, prompt, entry, specs)
        runs += group_runs * times
        if group_usd is None:
            priced = False
        else:
            usd += group_usd * times
    return Size(runs, usd if priced else None, _dimensions(manifest))


def _group(
    manifest: Manifest, prompt: Prompt, entry: RunSpec | None, specs: Mapping[str, ModelSpec]
) -> tuple[int, Decimal | None]:
    """Runs and cost of one image set paired with ``prompt`` (in run ``entry``, if any)."""
    pinned = {**prompt.options, **(entry.options if entry else {})}
    axes = [(name, values) for name, values in manifest.matrix.items() if name not in pinned]
    variants = variants_of(manifest.defaults, prompt, entry)
    runs = math.prod(len(values) for _, values in axes) * variants
    spec = specs.get(model_of(manifest.defaults, prompt, entry))
    if spec is None:
        return runs, None
    # A price depends only on the options its rules name; on each axis they name, the values
    # no rule names all price alike, so one of them stands for all (with their count).
    named: dict[str, set[str]] = {}
    for rule in spec.price_rules:
        for name, value in rule.when.items():
            named.setdefault(name, set()).add(value)
    unpriced = math.prod(len(values) for name, values in axes if name not in named)
    classes = []
    for name, values in axes:
        if name in named:
            other = next((v for v in values if v not in named[name]), None)
            counts = Counter(v if v in named[name] else other for v in values)
            classes.append([(name, value, n) for value, n in counts.items()])
    base = {**spec.defaults(), **manifest.defaults.options, **pinned}
    usd = Decimal(0)
    for combo in itertools.product(*classes):
        options = {**base, **{name: value for name, value, _ in combo}}
        usd += spec.price_for(options) * math.prod(n for _, _, n in combo)
    return runs, usd * unpriced * variants


def _dimensions(manifest: Manifest) -> tuple[Dimension, ...]:
    dims: list[Dimension] = []
    if manifest.runs is None:
        catalog = manifest.catalog
        if catalog is not None:
            where = ("catalog", "feed") if catalog.feed is not None else ("catalog", "prefix")
        else:
            where = ("image_sets",)
        dims.append(Dimension(where, "image sets", len(manifest.image_sets)))
        dims.append(Dimension(("prompts",), "prompts", len(manifest.prompts)))
    else:
        dims.append(Dimension(("runs",), "run entries", len(manifest.runs)))
    for name, values in manifest.matrix.items():
        dims.append(Dimension(("matrix", name), f"{name} values", len(values)))
    holders = [manifest.defaults, *manifest.prompts, *(manifest.runs or ())]
    most = max(holders, key=lambda h: h.variants or 0)
    if most.variants:
        dims.append(Dimension(most._path + ("variants",), "variants", most.variants))
    return tuple(dims)
