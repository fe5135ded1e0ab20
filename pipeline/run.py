"""A run: one paid edit request, fully resolved, and its run key.

``Run`` and ``InputRef`` are the values every layer passes around (a run's JSON, ``to_dict``,
is what the state layer, execution and the sidecars read); ``run_key`` is the sha256 of what
the provider is asked to do (see ``pipeline.plan``). They live here, below ``plan`` and
``blueprint``, because both build runs: ``plan`` from a manifest, ``blueprint`` from the
parts a plan's runs share (stored once per job).

Domain layer: imports nothing of editpipe's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# A run's output_format → the extension of its output key.
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


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


def run_key(model: str, options: Mapping[str, str], prompt: str, inputs: Iterable[InputRef], variant: int) -> str:
    """The sha256 (hex) of a canonical JSON of one request; see ``pipeline.plan``.

    Local inputs count by content only, so a checkout in another directory (or a renamed
    file with the same bytes) keeps its keys; s3 inputs by URI and ETag; URLs by URI.
    """
    canonical = {
        "model": model,
        "options": dict(options),
        "prompt": prompt,
        "inputs": [input_identity(ref) for ref in inputs],
        "variant": variant,
    }
    return hashlib.sha256(canonical_json(canonical).encode("utf-8")).hexdigest()


def input_identity(ref: InputRef) -> list[str]:
    """What of an input its runs' keys depend on."""
    return [ref.identity] if ref.kind == "local" else [ref.uri, ref.identity]


def inputs_json(inputs: Iterable[InputRef]) -> str:
    """The canonical JSON ``run_key`` writes for a run's inputs (a list of identities)."""
    return f"[{','.join('[' + ','.join(map(canonical_json, input_identity(ref))) + ']' for ref in inputs)}]"


# One encoder for every key: json.dumps with these arguments would build a new one per call.
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def key_prefix(inputs_json_: str, model: str, options_json: str, prompt: str) -> str:
    """``run_key``'s canonical JSON put together from its parts (keys in sorted order, each
    value as ``canonical_json`` writes it) up to the variant: "variant" sorts last, so each
    variant's key is the sha256 of this prefix, its number and ``}``."""
    return (f'{{"inputs":{inputs_json_},"model":{canonical_json(model)},"options":{options_json}'
            f',"prompt":{canonical_json(prompt)},"variant":')


def key_of(prefix: str, variant: int) -> str:
    return hashlib.sha256(f"{prefix}{variant}}}".encode()).hexdigest()
