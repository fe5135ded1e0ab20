"""Plans: a validated manifest turned into the ordered list of runs a job will pay for.

Each run carries a ``run_key``, the sha256 of what the provider is asked to do: the model,
every resolved request option, the prompt as sent, the inputs by content identity, and the
variant number. Equal requests get equal keys in any process on any day, which is what lets
a job skip runs already done; the key never depends on the output root, the manifest name
or the run's position.

A plan of 100,000 runs is held in memory, so runs are kept light: slotted, and the runs of
one image set share its inputs and vars, the runs of one option set share its options. Runs
and their inputs are not changed once planned, but they are not frozen dataclasses either:
those set each field through ``object.__setattr__``, which made building them three times
slower (with catalog sets and feed rows: 0.4 s of the 3 s a 100,000-row feed took to load
and plan).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from .manifest import EXTENSIONS, AnyImageSet, Manifest, gc_paused, image_kind
from .modelspec import ModelSpec

_CHUNK = 1 << 20


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
    """Every run of ``manifest``, in plan order: ``Manifest.pair_runs``, each pair's option
    sets in matrix order, then variants.

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
    # The output keys the manifest's checks rendered already, when made with these specs.
    reuse = manifest.output_keys is not None and manifest.output_keys_specs is specs
    rendered = iter(manifest.output_keys) if reuse else None
    for pair in manifest.pair_runs(specs):
        image_set, prompt = pair.image_set, pair.prompt
        inputs, inputs_json = identities.of_set(image_set)
        text = manifest.render_prompt(image_set, prompt)
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
            if rendered is None:
                output_keys: Iterable[str] = manifest.render_output_keys(pair, options)
            else:
                output_keys = itertools.islice(rendered, pair.variants)
            for variant, output_key in enumerate(output_keys, start=1):
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
