"""Blueprints: the parts a plan's runs share, from which run ``i`` is built by arithmetic.

A catalog job of 1,000,000 runs has 100,000 image sets and 10 prompts: every run is one
image set × one prompt (or run entry) × one option set × one variant. A ``Blueprint`` holds
those parts once (``SetPart``: an image set's id, identified inputs and vars; ``Group``: a
prompt or run entry's text, model, variants and option sets; the ``output_key`` template)
and the layout that orders them: every set × every group (``pairs`` None), or the listed
pairs of a ``runs`` list. Run ``i`` is found by position arithmetic and built on demand, so

- a plan iterates its runs lazily (``PlannedRuns``, a ``Sequence[Run]``): memory does not
  grow with the number of runs, and what only needs run keys (and output keys) computes
  those alone (``keys``, ``keys_and_outputs``);
- a job stores its blueprint in Redis once (``head`` and ``set_chunks``) instead of each
  run's JSON, and a worker rebuilds any run from it (``from_head`` with a loader of sets).

Guaranteed: ``blueprint.run(i)`` equals, field by field, the ``i``-th run ``pipeline.plan``
builds for the same manifest and inputs (the same run key, output key, prompt as sent,
options and inputs), in any process; the stored form gives back the same runs. Templates
are ``str.format_map`` sources (``manifest.Template`` parses them so).

Domain layer: imports ``run`` only.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NamedTuple, overload

from .run import EXTENSIONS, InputRef, Run, canonical_json, inputs_json, key_of, key_prefix

if TYPE_CHECKING:
    from .modelspec import ModelSpec

FORMAT = 1  # of the stored head; a head of another format is not read
SETS_PER_CHUNK = 64  # image sets stored per field: a worker reads ~640 runs' parts at once


class SetPart(NamedTuple):
    """An image set as its runs need it: ``inputs`` identified, ``inputs_json`` as
    ``run_key`` writes them."""

    id: str
    inputs: tuple[InputRef, ...]
    vars: dict[str, str]
    inputs_json: str

    @classmethod
    def of(cls, set_id: str, inputs: tuple[InputRef, ...], vars_: dict[str, str]) -> SetPart:
        return cls(set_id, inputs, vars_, inputs_json(inputs))

    def stored(self) -> list[Any]:
        return [self.id, [[ref.uri, ref.kind, ref.identity] for ref in self.inputs], self.vars]

    @classmethod
    def from_stored(cls, data: list[Any]) -> SetPart:
        set_id, refs, vars_ = data
        return cls.of(str(set_id), tuple(InputRef(str(u), str(k), str(i)) for u, k, i in refs),
                      {str(k): str(v) for k, v in vars_.items()})


@dataclass(frozen=True)
class Group:
    """What the runs of one prompt (or run entry) share with every image set it meets:
    each of ``option_sets`` is run ``variants`` times, in that order."""

    prompt_id: str
    prompt_text: str  # a template: the image set's vars fill it
    model: str
    variants: int
    option_sets: tuple[dict[str, str], ...]
    options_json: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options_json", tuple(canonical_json(o) for o in self.option_sets))

    @property
    def runs(self) -> int:
        return len(self.option_sets) * self.variants

    def stored(self) -> dict[str, Any]:
        return {"prompt_id": self.prompt_id, "prompt_text": self.prompt_text, "model": self.model,
                "variants": self.variants, "option_sets": list(self.option_sets)}

    @classmethod
    def from_stored(cls, data: Mapping[str, Any]) -> Group:
        return cls(str(data["prompt_id"]), str(data["prompt_text"]), str(data["model"]), int(data["variants"]),
                   tuple({str(k): str(v) for k, v in o.items()} for o in data["option_sets"]))


class Blueprint:
    """The runs of a plan, as their shared parts and a layout (see the module docstring).

    Parameters:
      groups: one per prompt (every set × every group) or per distinct run entry;
      output_key: the ``output_key`` template;
      set_count: how many image sets ``set_at`` can give;
      set_at: the image set at a position (a list's ``__getitem__``, or a loader from storage);
      pairs: None for every set × every group in order, else ``(set position, group)`` per
        run entry, in order.
    """

    def __init__(self, groups: Sequence[Group], output_key: str, set_count: int,
                 set_at: Callable[[int], SetPart], pairs: Sequence[tuple[int, int]] | None = None):
        self.groups = tuple(groups)
        self.output_key = output_key
        self.set_count = set_count
        self.set_at = set_at
        self.pairs = None if pairs is None else tuple(pairs)
        if self.pairs is None:
            self._group_starts = list(itertools.accumulate((g.runs for g in self.groups), initial=0))
            self._per_set = self._group_starts[-1]
            self._len = self._per_set * set_count
        else:
            self._pair_starts = list(itertools.accumulate((self.groups[g].runs for _, g in self.pairs), initial=0))
            self._len = self._pair_starts[-1]

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[int, int, int, int]:
        """Run ``index``'s (set position, group, option set, variant); ``IndexError`` out of range."""
        if not 0 <= index < self._len:
            raise IndexError(f"run {index} is not in this plan of {self._len} runs")
        if self.pairs is None:
            set_pos, rest = divmod(index, self._per_set)
            group = bisect.bisect_right(self._group_starts, rest) - 1
            rest -= self._group_starts[group]
        else:
            pair = bisect.bisect_right(self._pair_starts, index) - 1
            set_pos, group = self.pairs[pair]
            rest = index - self._pair_starts[pair]
        option, variant = divmod(rest, self.groups[group].variants)
        return set_pos, group, option, variant + 1

    def run(self, index: int) -> Run:
        """Run ``index``, built from its parts."""
        set_pos, g, option, variant = self.locate(index)
        part, group = self.set_at(set_pos), self.groups[g]
        text = group.prompt_text.format_map(part.vars)
        prefix = key_prefix(part.inputs_json, group.model, group.options_json[option], text)
        return self._run(index, part, group, option, variant, text, prefix)

    def _run(self, index: int, part: SetPart, group: Group, option: int, variant: int, text: str,
             prefix: str) -> Run:
        options = group.option_sets[option]
        return Run(index=index, run_key=key_of(prefix, variant), image_set=part.id, prompt_id=group.prompt_id,
                   variant=variant, model=group.model, prompt=text, options=options, inputs=part.inputs,
                   output_key=self._output_key(part, group, options, variant), vars=part.vars)

    def _output_key(self, part: SetPart, group: Group, options: Mapping[str, str], variant: int) -> str:
        values = {**options, **part.vars, "image_set": part.id, "prompt": group.prompt_id, "variant": str(variant)}
        return f"{self.output_key.format_map(values)}.{EXTENSIONS[options['output_format']]}"

    def _walk(self) -> Iterator[tuple[SetPart, Group, str]]:
        """Each pair in plan order: its set, its group, its prompt as sent."""
        if self.pairs is None:
            for set_pos in range(self.set_count):
                part = self.set_at(set_pos)
                for group in self.groups:
                    yield part, group, group.prompt_text.format_map(part.vars)
        else:
            for set_pos, g in self.pairs:
                part, group = self.set_at(set_pos), self.groups[g]
                yield part, group, group.prompt_text.format_map(part.vars)

    def __iter__(self) -> Iterator[Run]:
        index = 0
        for part, group, text in self._walk():
            for option, options_json in enumerate(group.options_json):
                prefix = key_prefix(part.inputs_json, group.model, options_json, text)
                for variant in range(1, group.variants + 1):
                    yield self._run(index, part, group, option, variant, text, prefix)
                    index += 1

    def keys(self) -> Iterator[str]:
        """Every run key in plan order, without building the runs."""
        for part, group, text in self._walk():
            for options_json in group.options_json:
                prefix = key_prefix(part.inputs_json, group.model, options_json, text)
                for variant in range(1, group.variants + 1):
                    yield key_of(prefix, variant)

    def keys_and_outputs(self) -> Iterator[tuple[str, str]]:
        """``(run key, output key)`` of every run in plan order, without building the runs."""
        for part, group, text in self._walk():
            for options, options_json in zip(group.option_sets, group.options_json):
                prefix = key_prefix(part.inputs_json, group.model, options_json, text)
                for variant in range(1, group.variants + 1):
                    yield key_of(prefix, variant), self._output_key(part, group, options, variant)

    def prices(self, specs: Mapping[str, ModelSpec]) -> Iterator[Decimal]:
        """What each run costs if it completes, in plan order (priced once per option set)."""
        priced = [[specs[g.model].price_for(o) for o in g.option_sets] for g in self.groups]
        order = ((g for g in range(len(self.groups))) for _ in range(self.set_count)) if self.pairs is None \
            else ((g,) for _, g in self.pairs)
        for groups in order:
            for g in groups:
                variants = self.groups[g].variants
                for price in priced[g]:
                    for _ in range(variants):
                        yield price

    # --- the stored form -------------------------------------------------------------------

    def head(self) -> str:
        """Everything but the image sets, as JSON (``from_head`` reads it back)."""
        return json.dumps({"format": FORMAT, "output_key": self.output_key, "set_count": self.set_count,
                           "groups": [g.stored() for g in self.groups],
                           "pairs": None if self.pairs is None else [p for pair in self.pairs for p in pair]},
                          separators=(",", ":"), ensure_ascii=False)

    def set_chunks(self, per_chunk: int = SETS_PER_CHUNK) -> Iterator[tuple[int, str]]:
        """``(chunk number, JSON)`` of the image sets, ``per_chunk`` to a chunk: set ``p`` is in
        chunk ``p // per_chunk``."""
        for chunk, start in enumerate(range(0, self.set_count, per_chunk)):
            sets = [self.set_at(p).stored() for p in range(start, min(start + per_chunk, self.set_count))]
            yield chunk, json.dumps(sets, separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_head(cls, head: str, set_at: Callable[[int], SetPart]) -> Blueprint:
        """A stored blueprint; ``set_at`` loads an image set (``set_chunk`` parses a chunk)."""
        data = json.loads(head)
        if data.get("format") != FORMAT:
            raise ValueError(f"a stored blueprint of format {data.get('format')!r}; this editpipe reads {FORMAT}")
        flat = data["pairs"]
        pairs = None if flat is None else list(zip(flat[::2], flat[1::2]))
        return cls([Group.from_stored(g) for g in data["groups"]], data["output_key"], int(data["set_count"]),
                   set_at, pairs)


def set_chunk(text: str) -> list[SetPart]:
    """The image sets of one stored chunk (``Blueprint.set_chunks``)."""
    return [SetPart.from_stored(s) for s in json.loads(text)]


class PlannedRuns(Sequence[Run]):
    """A plan's runs, built as they are read: ``len`` by arithmetic, ``plan.runs[i]`` by
    position, iteration in plan order. Each access builds a new ``Run`` (equal to the last)."""

    def __init__(self, blueprint: Blueprint):
        self.blueprint = blueprint

    def __len__(self) -> int:
        return len(self.blueprint)

    @overload
    def __getitem__(self, index: int) -> Run: ...
    @overload
    def __getitem__(self, index: slice) -> list[Run]: ...

    def __getitem__(self, index: int | slice) -> Run | list[Run]:
        if isinstance(index, slice):
            return [self.blueprint.run(i) for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        return self.blueprint.run(index)

    def __iter__(self) -> Iterator[Run]:
        return iter(self.blueprint)

    def __bool__(self) -> bool:
        return len(self) > 0

    def __eq__(self, other: object) -> bool:
        """Equal to any sequence of equal runs in the same order (a list of them, say)."""
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]
