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
``plan_runs`` builds them. The manifest's checks walk the same pairs to judge output keys,
so that the keys checked are exactly those a plan writes.

Each run carries a ``run_key``, the sha256 of what the provider is asked to do: the model,
every resolved request option, the prompt as sent, the inputs by content identity, and the
variant number. Equal requests get equal keys in any process on any day, which is what lets
a job skip runs already done; the key never depends on the output root, the manifest name
or the run's position.

A plan of 100,000 runs is held in memory, so runs are kept light: slotted, and the runs of
one image set share its inputs and vars, the runs of one option set share its options. Runs
and their inputs are not changed once planned, but they are not frozen dataclasses either:
those set each field through ``object.__setattr__``, which makes building them three times
slower.

Domain layer: imports ``modelspec`` only; the manifest's types are named for type checkers
alone (``pipeline.manifest`` imports this module to check output keys).
"""

from __future__ import annotations

import gc
import hashlib
import itertools
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .modelspec import DEFAULT_MODEL, ModelSpec

if TYPE_CHECKING:
    from .manifest import AnyImageSet, Defaults, Manifest, Prompt, RunSpec

# A run's output_format → the extension of its output key.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
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


@dataclass(slots=True)
class InputRef:
    """One reference image of a run.

    ``uri``: s3:// and http(s) URIs as written, local files as an absolute path.
    ``identity``: ``sha256:<hex>`` of a local file's bytes, ``etag:<etag>`` of an s3 object,
    the URI itself for http(s) (the provider fetches it; we cannot see what it will get).
    """

    uri: str
    kind: str
    identity: str

    def to_dict(self) -> dict[str, str]:
        return {"uri": self.uri, "kind": self.kind, "identity": self.identity}


@dataclass(slots=True)
class Run:
    """One paid edit request, fully resolved: nothing left to look up in the manifest.

    ``options`` holds every request option of the model; ``output_key`` already has the
    output format's extension; ``variant`` is 1-based, ``index`` 0-based in plan order.
    ``options`` and ``vars`` may be shared with other runs of the same plan: read only.
    """

    index: int
    run_key: str
    image_set: str
    prompt_id: str
    variant: int
    model: str
    prompt: str
    options: dict[str, str]
    inputs: tuple[InputRef, ...]
    output_key: str
    vars: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict that ``from_dict`` turns back into an equal ``Run``."""
        return {
            "index": self.index,
            "run_key": self.run_key,
            "image_set": self.image_set,
            "prompt_id": self.prompt_id,
            "variant": self.variant,
            "model": self.model,
            "prompt": self.prompt,
            "options": dict(self.options),
            "inputs": [ref.to_dict() for ref in self.inputs],
            "output_key": self.output_key,
            "vars": dict(self.vars),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Run:
        return cls(
            index=int(d["index"]),
            run_key=str(d["run_key"]),
            image_set=str(d["image_set"]),
            prompt_id=str(d["prompt_id"]),
            variant=int(d["variant"]),
            model=str(d["model"]),
            prompt=str(d["prompt"]),
            options={str(k): str(v) for k, v in d["options"].items()},
            inputs=tuple(InputRef(str(i["uri"]), str(i["kind"]), str(i["identity"])) for i in d["inputs"]),
            output_key=str(d["output_key"]),
            vars={str(k): str(v) for k, v in d["vars"].items()},
        )


@dataclass(frozen=True)
class Plan:
    """The runs of one manifest, in order, and the catalog rows it skipped (``file:line:col:
    field: message`` each, as ``on_bad_row: skip`` asks)."""

    manifest_name: str
    runs: list[Run]
    skipped_rows: list[str] = field(default_factory=list)

    def estimated_cost(self, specs: Mapping[str, ModelSpec]) -> Decimal:
        """What the whole plan costs if every run completes (only completed runs are billed)."""
        return self.cost_of(self.runs, specs)

    def cost_of(self, runs: Iterable[Run], specs: Mapping[str, ModelSpec]) -> Decimal:
        """What ``runs`` cost if each completes once."""
        return sum((specs[run.model].price_for(run.options) for run in runs), Decimal(0))


def run_key(model: str, options: Mapping[str, str], prompt: str, inputs: Iterable[InputRef], variant: int) -> str:
    """The sha256 (hex) of a canonical JSON of one request; see the module docstring.

    Local inputs count by content only, so a checkout in another directory (or a renamed
    file with the same bytes) keeps its keys; s3 inputs by URI and ETag; URLs by URI.
    """
    canonical = {
        "model": model,
        "options": dict(options),
        "prompt": prompt,
        "inputs": [_input_identity(ref) for ref in inputs],
        "variant": variant,
    }
    return hashlib.sha256(_canonical_json(canonical).encode("utf-8")).hexdigest()


def _input_identity(ref: InputRef) -> list[str]:
    return [ref.identity] if ref.kind == "local" else [ref.uri, ref.identity]


# One encoder for every key: json.dumps with these arguments would build a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


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
    """Input identities, each computed once per plan however many runs share the input, with
    the canonical JSON ``run_key`` writes for it (a run's inputs are that JSON, joined)."""

    def __init__(self, manifest: Manifest, s3_etag: Callable[[str], str] | None):
        self._manifest = manifest
        self._s3_etag = s3_etag
        self._refs: dict[str, tuple[InputRef, str]] = {}

    def of_set(self, image_set: AnyImageSet) -> tuple[tuple[InputRef, ...], str]:
        """The set's inputs and their canonical JSON (a JSON list, as ``run_key`` encodes it)."""
        known = self._refs
        found = [known[ref] if ref in known else self._add(ref) for ref in image_set.images]
        return tuple(ref for ref, _ in found), f"[{','.join(text for _, text in found)}]"

    def _add(self, ref: str) -> tuple[InputRef, str]:
        identified = self._identify(ref)
        # A list of strings, as _canonical_json writes it.
        text = f"[{','.join(map(_canonical_json, _input_identity(identified)))}]"
        added = self._refs[ref] = (identified, text)
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
    matrix order, then variants.

    ``s3_etag(uri)`` returns an s3 object's ETag; it is required when an input is in S3 and
    the manifest's catalog listing did not give it (``ValueError`` otherwise). Deterministic:
    the same manifest and input bytes give the same runs and keys.
    """
    with gc_paused():
        runs = _runs(manifest, specs, s3_etag)
    return Plan(manifest_name=manifest.name, runs=runs, skipped_rows=list(manifest.skipped_rows))


def _runs(manifest: Manifest, specs: Mapping[str, ModelSpec], s3_etag: Callable[[str], str] | None) -> list[Run]:
    identities = _Identities(manifest, s3_etag)
    options_json: dict[int, str] = {}  # by id of the shared options dict (see pair_runs)
    runs: list[Run] = []
    for pair in pair_runs(manifest, specs):
        image_set, prompt = pair.image_set, pair.prompt
        inputs, inputs_json = identities.of_set(image_set)
        text = manifest.prompt_template(prompt).render(image_set.vars)
        # run_key's canonical JSON put together from its parts (keys in sorted order, each
        # value as _canonical_json writes it), so that what runs share is encoded once:
        # "variant" sorts last, so each variant's key is the prefix plus its number.
        head = f'{{"inputs":{inputs_json},"model":{_canonical_json(pair.model)},"options":'
        tail = f',"prompt":{_canonical_json(text)},"variant":'
        for options in pair.option_sets:
            if id(options) not in options_json:
                options_json[id(options)] = _canonical_json(options)
            prefix = f"{head}{options_json[id(options)]}{tail}"
            extension = EXTENSIONS[options["output_format"]]
            for variant, output_key in enumerate(render_output_keys(manifest, pair, options), start=1):
                runs.append(
                    Run(
                        index=len(runs),
                        run_key=hashlib.sha256(f"{prefix}{variant}}}".encode()).hexdigest(),
                        image_set=image_set.id,
                        prompt_id=prompt.id,
                        variant=variant,
                        model=pair.model,
                        prompt=text,
                        options=options,
                        inputs=inputs,
                        output_key=f"{output_key}.{extension}",
                        vars=image_set.vars,
                    )
                )
    return runs
