"""The output key of every planned run is safe and used once.

Uniqueness is judged without the extension: the ``.json`` sidecar sits beside each output as
``<output_key>.json``, so two formats under one key would still collide. The runs are those
``pipeline.plan`` expands, their keys rendered the way a plan renders them.

Rendering every key of a 100,000-run manifest costs as much as planning would spend
rendering them again, so a manifest whose keys are safe and distinct by their shape alone is
not rendered here (``distinct_by_shape``); any other is, and every problem is reported.

Duplicates are found in bounded memory, never with one set of every key: a first pass keeps
an 8-byte hash per key in an array, sorted, whose repeats name the few hashes worth a look;
only when there are some (or an unsafe key) does a second pass render the keys again,
holding just the keys whose hash repeats, and report exactly as one pass over a set would.
"""

from __future__ import annotations

import re
from array import array
from collections.abc import Iterator, Mapping

from ...modelspec import ModelSpec
from ...plan import PairRuns, option_sets, pair_runs, pairs, render_output_keys
from ..reader import DocPath
from ..schema import RUN_FIELDS
from ..template import unsafe_key
from ..value import Manifest
from .context import MAX_RUN_ISSUES, Context

_SEGMENT = re.compile(r"[^/\\\x00-\x1f]+")


def _is_segment(value: str) -> bool:
    """Whether ``value`` is one safe segment of a key: not empty, ``.`` or ``..``; no ``/``,
    backslash or control character."""
    return _SEGMENT.fullmatch(value) is not None and value not in (".", "..")


def output_keys(ctx: Context) -> None:
    """Report each run whose key is unsafe or another run's (the first ``MAX_RUN_ISSUES``,
    then how many more)."""
    if distinct_by_shape(ctx.manifest, ctx.specs):
        return
    repeated, unsafe = _repeated_hashes(ctx)
    if not repeated and not unsafe:
        return
    path: DocPath = ("output_key",)
    first: dict[str, tuple[PairRuns, Mapping[str, str], int]] = {}
    reported = 0
    hidden = 0
    for pair, options, variant, key in _keys(ctx):
        problem = unsafe_key(key)
        if problem is None and key not in first:
            if hash(key) in repeated:  # only a key whose hash repeats can be met again
                first[key] = (pair, options, variant)
            continue
        if reported >= MAX_RUN_ISSUES:
            hidden += 1
            continue
        reported += 1
        run = _describe(pair, options, variant)
        if problem is not None:
            ctx.add(path, f"{key!r} for {run} {problem}")
        else:
            ctx.add(path, f"{key!r} is the output of two runs: {_describe(*first[key])} and {run}")
    if hidden:
        ctx.add(path, f"and {hidden} more runs with an unsafe or shared output key")


def _keys(ctx: Context) -> Iterator[tuple[PairRuns, Mapping[str, str], int, str]]:
    """Every run's output key (without extension) in plan order, with what it was made of."""
    for pair in pair_runs(ctx.manifest, ctx.specs):
        for options in pair.option_sets:
            try:
                keys = render_output_keys(ctx.manifest, pair, options)
            except KeyError:
                continue  # an unknown model leaves spec defaults unresolved; reported already
            for variant, key in enumerate(keys, start=1):
                yield pair, options, variant, key


def _repeated_hashes(ctx: Context) -> tuple[set[int], bool]:
    """The hashes that more than one safe key has (a superset of the repeated keys'), and
    whether some key is unsafe; 8 bytes held per key."""
    hashes = array("q")
    unsafe = False
    for _, _, _, key in _keys(ctx):
        if unsafe_key(key) is None:
            hashes.append(hash(key))
        else:
            unsafe = True
    import numpy as np  # only for manifests whose keys are rendered

    ordered = np.sort(np.frombuffer(hashes, dtype=np.int64))
    return set(ordered[1:][ordered[1:] == ordered[:-1]].tolist()), unsafe


def distinct_by_shape(manifest: Manifest, specs: Mapping[str, ModelSpec]) -> bool:
    """True only when every run's output key is safe and no two are equal, known without
    rendering them; False when that takes rendering (which may find them fine too).

    When the template is safe as text, each of its placeholders fills whole ``/`` segments
    and no value put in holds a ``/``, a key's segments give back each value it was
    rendered from. Its keys are then safe when each value is a safe segment, and distinct
    when the values are: ``image_set``, ``prompt`` and ``variant`` tell pairs and variants
    apart (given unique ids, and a ``runs`` list naming each pair once), and the template's
    option names tell a pair's option sets apart.
    """
    template = manifest.output_template
    names = template.names
    if not template.fills_whole_segments or not set(RUN_FIELDS) <= set(names):
        return False
    if unsafe_key(template.render(dict.fromkeys(names, "x"))) is not None:
        return False
    if len(manifest.sets_by_id) != len(manifest.image_sets) or len(manifest.prompts_by_id) != len(manifest.prompts):
        return False
    if manifest.runs is not None and len({(e.image_set, e.prompt) for e in manifest.runs}) != len(manifest.runs):
        return False
    if not all(_is_segment(p.id) for p in manifest.prompts):
        return False
    # By prompt (and run entry): the option names and the var names its keys take.
    groups: dict[tuple[int, int], tuple[frozenset[str], tuple[str, ...]]] = {}
    for image_set, prompt, entry in pairs(manifest):
        group = (id(prompt), id(entry))
        if group not in groups:
            sets = option_sets(manifest, prompt, entry, specs)
            option_names = [n for n in names if n not in RUN_FIELDS and n in sets[0]]
            values = [tuple(s[n] for n in option_names) for s in sets]
            if len(set(values)) != len(values):
                return False
            if not all(_is_segment(v) for combo in values for v in combo):
                return False
            groups[group] = (
                frozenset(option_names),
                tuple(n for n in names if n not in RUN_FIELDS and n not in option_names),
            )
        if not _is_segment(image_set.id):
            return False
        vars_ = image_set.vars
        from_options, from_vars = groups[group]
        if from_options and not from_options.isdisjoint(vars_):
            return False  # a var would stand in for an option: not a shape this judges
        for name in from_vars:
            value = vars_.get(name)
            if value is None or not _is_segment(value):
                return False
    return True


def _describe(pair: PairRuns, options: Mapping[str, str], variant: int) -> str:
    described = " ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"(image_set={pair.image_set.id} prompt={pair.prompt.id} variant={variant} {described})"
