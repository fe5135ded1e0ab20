"""Manifests: the YAML a user writes (manifest.md, version 1), loaded and validated in full.

``load_manifest`` either returns a ``Manifest`` that plans without surprises, or raises
``ManifestError`` carrying every issue found, each located at the offending YAML node as
``file:line:col: field: message``. Pydantic models check structure and types (and give the
JSON Schema editors use); the model specs decide meaning: known models, allowed option
values, vars every paired image set defines, output keys that are safe and unique.

The planning rules live here as ``Manifest.pair_runs`` so that the output keys checked at
validation are exactly those the plan writes:

- without ``runs``, every image set × every prompt; with ``runs``, exactly the listed pairs;
- each pair is crossed with ``matrix`` values, except on the axes its prompt or run entry
  sets itself (those pin one value, so the axis collapses rather than repeating a run);
- options resolve run > prompt > matrix > defaults > model spec defaults; ``model`` and
  ``variants`` resolve run > prompt > defaults.

A ``catalog`` (a CSV/JSONL feed or a folder of product folders, read by ``catalog.py``) adds
``CatalogSet``s after the inline image sets. Its rows are judged one by one: a row without a
usable image or id is a bad row, skipped (and listed in ``Manifest.skipped_rows``) or an
issue located in the feed, as ``on_bad_row`` says. What every row shares (the columns, the
vars prompts may use) is judged once, at the manifest's own lines.
"""

from __future__ import annotations

import difflib
import gc
import itertools
import os
import re
import string
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from .catalog import CatalogUnreadable, Entry, MissingColumns, Sources, read_feed, read_folder
from .errors import ManifestError, ManifestIssue
from .modelspec import DEFAULT_MODEL, ModelSpec
from .settings import Settings

SUPPORTED_VERSION = 1
DEFAULT_OUTPUT_KEY = "{image_set}/{prompt}/{aspect_ratio}/{variant}"
# Names output_key knows besides request options and vars.
RUN_FIELDS = ("image_set", "prompt", "variant")
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}

DocPath = tuple[str | int, ...]

_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
_PLACEHOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_CONTROL = re.compile(r"[\x00-\x1f]")
# Aliases can make a tiny document expand enormously; no real manifest comes near this.
_MAX_NODES = 5_000_000
# Issues found by walking every planned run are capped so that one systematic mistake in a
# 100,000-run manifest stays readable.
_MAX_RUN_ISSUES = 20


# --- YAML with locations -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Scalar:
    """A YAML scalar that did not resolve to a string; keeps the text the user wrote.

    String fields take ``source`` (``id: 0412`` stays "0412", ``aspect_ratio: 2:3`` stays
    "2:3" instead of YAML 1.1's sexagesimal 123); number fields take ``value``; money takes
    ``source`` so that no float ever comes between the YAML and the ``Decimal``.
    """

    value: Any
    source: str

    def __repr__(self) -> str:
        return self.source


@dataclass(frozen=True)
class Locations:
    """Where each node of a manifest was written: 1-based (line, column) by document path.

    A path is the tuple of mapping keys and list indexes from the root, e.g.
    ``("image_sets", 0, "images", 2)``. ``values`` locates the node at a path, ``keys``
    the key naming it (for unknown keys).
    """

    file: str
    values: Mapping[DocPath, tuple[int, int]]
    keys: Mapping[DocPath, tuple[int, int]]

    def at(self, path: DocPath, *, key: bool = False) -> tuple[int, int]:
        """The node at ``path``, or its nearest ancestor that exists (e.g. for a missing field)."""
        if key and path in self.keys:
            return self.keys[path]
        while path and path not in self.values:
            path = path[:-1]
        return self.values.get(path, (1, 1))

    def issue(self, path: DocPath, message: str, *, key: bool = False) -> ManifestIssue:
        line, col = self.at(path, key=key)
        return ManifestIssue(self.file, line, col, field_name(path), message)


def field_name(path: DocPath) -> str:
    """``("image_sets", 0, "images")`` → ``image_sets[0].images``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "manifest"


class _Reader:
    """Turns a composed YAML node tree into plain data plus the location of every node."""

    _STR = "tag:yaml.org,2002:str"
    _MERGE = "tag:yaml.org,2002:merge"

    def __init__(self, file: str):
        self.file = file
        self.values: dict[DocPath, tuple[int, int]] = {}
        self.keys: dict[DocPath, tuple[int, int]] = {}
        self.issues: list[ManifestIssue] = []
        self._constructor = yaml.constructor.SafeConstructor()
        self._active: set[int] = set()
        self._count = 0

    def _issue(self, mark: yaml.Mark, path: DocPath, message: str) -> None:
        self.issues.append(ManifestIssue(self.file, mark.line + 1, mark.column + 1, field_name(path), message))

    def read(self, node: yaml.Node, path: DocPath) -> Any:
        self._count += 1
        if self._count > _MAX_NODES:
            raise _TooLarge
        self.values[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.ScalarNode):
            return self._scalar(node, path)
        if id(node) in self._active:
            self._issue(node.start_mark, path, "an alias refers to a node that contains it")
            return None
        self._active.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                return [self.read(child, path + (i,)) for i, child in enumerate(node.value)]
            return self._mapping(node, path)
        finally:
            self._active.discard(id(node))

    def _scalar(self, node: yaml.ScalarNode, path: DocPath) -> Any:
        if node.tag == self._STR:
            return node.value
        try:
            value = self._constructor.construct_object(node)
        except yaml.constructor.ConstructorError as exc:
            self._issue(node.start_mark, path, f"unsupported YAML value: {exc.problem}")
            return None
        return None if value is None else _Scalar(value, node.value)

    def _mapping(self, node: yaml.MappingNode, path: DocPath) -> dict[str, Any]:
        own: dict[str, int] = {}
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != self._MERGE:
                if key_node.value in own:
                    self._issue(
                        key_node.start_mark,
                        path + (key_node.value,),
                        f"duplicate key {key_node.value!r} (first at line {own[key_node.value]})",
                    )
                else:
                    own[key_node.value] = key_node.start_mark.line + 1
        try:
            self._constructor.flatten_mapping(node)
        except yaml.constructor.ConstructorError as exc:
            self._issue(exc.problem_mark or node.start_mark, path, f"invalid merge: {exc.problem}")
            return {}
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self._issue(key_node.start_mark, path, "keys must be plain names")
                continue
            key = key_node.value
            self.keys[path + (key,)] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = self.read(value_node, path + (key,))
        return out


class _TooLarge(Exception):
    pass


def _read_yaml(text: str, file: str) -> tuple[Any, Locations, list[ManifestIssue]]:
    reader = _Reader(file)
    locations = Locations(file, reader.values, reader.keys)
    try:
        root = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        detail = exc.problem or "syntax error"
        if exc.context:
            detail += f" ({exc.context})"
        return None, locations, [ManifestIssue(file, line, col, "yaml", f"invalid YAML: {detail}")]
    except yaml.YAMLError as exc:
        return None, locations, [ManifestIssue(file, 1, 1, "yaml", f"invalid YAML: {exc}")]
    if root is None:
        return None, locations, [ManifestIssue(file, 1, 1, "manifest", "the manifest is empty")]
    try:
        data = reader.read(root, ())
    except _TooLarge:
        return None, locations, [ManifestIssue(file, 1, 1, "manifest", "the document expands to too many nodes")]
    return data, locations, reader.issues


# --- Structure: pydantic models ------------------------------------------------------------


def _as_text(value: Any) -> Any:
    return value.source if isinstance(value, _Scalar) else value


def _as_value(value: Any) -> Any:
    return value.value if isinstance(value, _Scalar) else value


def _as_decimal_text(value: Any) -> Any:
    if isinstance(value, _Scalar) and isinstance(value.value, (int, float)) and not isinstance(value.value, bool):
        return value.source
    return value


# Constraints come before the validator that unwraps YAML scalars: placed after it, pydantic
# still enforces them but leaves them out of the JSON Schema.
Text = Annotated[str, BeforeValidator(_as_text)]
NonEmptyText = Annotated[str, Field(min_length=1), BeforeValidator(_as_text)]
Int = Annotated[StrictInt, BeforeValidator(_as_value)]
Variants = Annotated[StrictInt, Field(ge=1, description="Independent runs per combination."), BeforeValidator(_as_value)]
Money = Annotated[Decimal, Field(gt=0), BeforeValidator(_as_decimal_text)]
ModelName = Annotated[str, Field(description="Provider model; a spec under configs/models must exist."), BeforeValidator(_as_text)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Where the item was written, so that checks after validation can point at it.
    _path: DocPath = PrivateAttr(default=())


class _WithOptions(_Strict):
    """A mapping that may also set request options; their names come from the model spec."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Text] = Field(init=False)

    model: ModelName | None = None
    variants: Variants | None = None

    @property
    def options(self) -> dict[str, str]:
        """The request options set here (names not yet checked against a spec)."""
        return self.__pydantic_extra__


class Defaults(_WithOptions):
    """Request options, model and variants for every run (all optional)."""


class ImageSet(_Strict):
    """Reference images for one subject, and the vars its prompts may use."""

    id: NonEmptyText
    images: Annotated[
        list[Text],
        Field(min_length=1, description="Local paths (relative to the manifest), s3:// URIs or http(s) URLs."),
    ]
    vars: dict[str, Text] = Field(default_factory=dict)


class Prompt(_WithOptions):
    """An edit instruction; ``{name}`` refers to the paired image set's vars."""

    id: NonEmptyText
    text: NonEmptyText


class RunSpec(_WithOptions):
    """One hand-picked image set × prompt pair, optionally overriding options."""

    image_set: Text
    prompt: Text


class Catalog(_Strict):
    """Image sets from a feed (``feed``, ``id``, ``images``…) or a folder (``prefix``, ``pattern``)."""

    feed: Annotated[Text, Field(description="A .csv or .jsonl: local path, https URL or s3:// URI.")] | None = None
    id: Annotated[Text, Field(description="The feed column naming each image set.")] | None = None
    images: Annotated[list[Text], Field(min_length=1, description="Columns of image references.")] | None = None
    vars: Annotated[list[Text], Field(description="Columns usable as {name} in prompts.")] | None = None
    on_bad_row: Annotated[Literal["skip", "fail"], BeforeValidator(_as_text)] | None = None
    prefix: Annotated[Text, Field(description="s3://bucket/prefix/ or a local folder (relative to the manifest).")] | None = None
    pattern: Annotated[Text, Field(description="Glob under the prefix, e.g. */*.jpg: folders are image sets.")] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Catalog:
        feed_fields = (self.feed, self.id, self.images, self.vars)
        folder_fields = (self.prefix, self.pattern)
        is_feed = self.feed is not None and self.id is not None and self.images is not None
        is_folder = self.prefix is not None and self.pattern is not None
        if not (is_feed and all(f is None for f in folder_fields)) and not (
            is_folder and all(f is None for f in feed_fields)
        ):
            raise ValueError("a catalog is either a feed (feed, id, images) or a folder (prefix, pattern)")
        return self


Matrix = dict[str, Annotated[list[Text], Field(min_length=1)]]


class ManifestDoc(_Strict):
    """A manifest as written, version 1 (see manifest.md)."""

    version: Annotated[Int, Field(description="Manifest format version; must be 1.")]
    name: Annotated[
        str, Field(pattern=_NAME_PATTERN, description="A label: letters, digits, - and _."), BeforeValidator(_as_text)
    ]
    output: Annotated[Text, Field(description="s3://bucket/prefix, or a local directory relative to the manifest.")]
    budget_usd: Money | None = Field(default=None, description="The job never spends more than this (USD).")
    priority: Int = 0
    defaults: Defaults = Field(default_factory=Defaults)
    image_sets: Annotated[list[ImageSet], Field(min_length=1)] | None = None
    catalog: Catalog | None = None
    prompts: Annotated[list[Prompt], Field(min_length=1)]
    matrix: Matrix = Field(default_factory=dict, description="Option values crossed with every pair.")
    runs: Annotated[list[RunSpec], Field(min_length=1)] | None = None
    output_key: Text = Field(default=DEFAULT_OUTPUT_KEY, description="Where each output goes, before its extension.")


_FIELD_VOCABULARY = sorted(
    {name for model in (ManifestDoc, Defaults, ImageSet, Prompt, RunSpec, Catalog) for name in model.model_fields}
)


# Pydantic's wording, said the way a manifest author reads it.
_MESSAGES = {
    "string_type": "must be text",
    "int_type": "must be a whole number",
    "list_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "too_short": "must not be empty",
    "string_too_short": "must not be empty",
    "decimal_type": "must be a decimal amount, such as 25.00",
    "decimal_parsing": "must be a decimal amount, such as 25.00",
    "finite_number": "must be a finite amount",
}


def _pydantic_issue(error: Mapping[str, Any], locations: Locations) -> ManifestIssue:
    loc = tuple(error["loc"])
    path: DocPath = ()
    for part in loc:
        if path + (part,) in locations.values:
            path += (part,)
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "missing":
        issue = locations.issue(path, "required field is missing")
        return ManifestIssue(issue.file, issue.line, issue.col, field_name(path + (loc[-1],)), issue.message)
    if kind == "extra_forbidden":
        return locations.issue(path, _unknown_key(str(loc[-1]), _FIELD_VOCABULARY), key=True)
    if kind in _MESSAGES:
        message = _MESSAGES[kind]
    elif kind == "string_pattern_mismatch":
        message = f"{error['input']!r} must match {ctx.get('pattern')}"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    elif kind in ("greater_than", "greater_than_equal"):
        message = f"must be {'greater than' if kind == 'greater_than' else 'at least'} {ctx.get('gt', ctx.get('ge'))}"
    else:
        message = error["msg"]
    return locations.issue(path, message)


def _unknown_key(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown key {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


# --- Templates -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    """A ``{name}`` template, parsed once and rendered by joining (no ``str.format`` lookups).

    ``{{`` and ``}}`` stand for literal braces; a placeholder is a plain name only.
    """

    source: str
    parts: tuple[tuple[str, str | None], ...]

    @classmethod
    def parse(cls, source: str) -> Template:
        """Raises ``ValueError`` with a message for a person when the template is malformed."""
        try:
            pieces = list(string.Formatter().parse(source))
        except ValueError:
            raise ValueError("unbalanced braces; write {{ or }} for a literal brace") from None
        parts: list[tuple[str, str | None]] = []
        for literal, name, spec, conversion in pieces:
            if name is not None and (not _PLACEHOLDER.match(name) or spec or conversion):
                raise ValueError(f"{{{name}}} is not a placeholder; use a plain name such as {{product}}")
            parts.append((literal, name))
        return cls(source, tuple(parts))

    @property
    def names(self) -> list[str]:
        """Placeholder names, in order of first use."""
        return list(dict.fromkeys(name for _, name in self.parts if name is not None))

    def render(self, values: Mapping[str, str]) -> str:
        """Raises ``KeyError`` for a name ``values`` lacks."""
        # A parsed template is a valid str.format one whose fields are plain names only.
        return self.source.format_map(values)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause CPython's cyclic garbage collector while a catalog or plan is built.

    A 100,000-row feed becomes hundreds of thousands of dicts, tuples and runs in one go;
    each allocation burst makes the collector walk the growing heap again (17% of the feed's
    load + plan time in ``bench/plan``). None of these objects can form a cycle, so there is
    nothing for it to find; it resumes, if it was on, when the block ends.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# --- The validated manifest ----------------------------------------------------------------


def image_kind(ref: str) -> Literal["local", "s3", "https"]:
    """How an image reference is fetched; ``https`` covers ``http://`` too."""
    if ref.startswith("s3://"):
        return "s3"
    if ref.startswith(("https://", "http://")):
        return "https"
    return "local"


@dataclass(slots=True)
class CatalogSet:
    """An image set from a catalog row or folder, checked as it was read.

    Light on purpose (a feed may hold 100,000 of them): slotted, and not a frozen dataclass,
    which would take three times as long to build; not changed once read. ``vars`` holds
    every declared var, ``""`` for an empty cell; ``line`` is the feed line (0 for a folder),
    for messages.
    """

    id: str
    images: tuple[str, ...]
    vars: dict[str, str]
    line: int


AnyImageSet = ImageSet | CatalogSet


class PairRuns(NamedTuple):
    """An image set × prompt pair and what its runs share: each of ``option_sets`` (shared
    with the other pairs of the prompt, read only) is run ``variants`` times."""

    image_set: AnyImageSet
    prompt: Prompt
    entry: RunSpec | None
    model: str
    variants: int
    option_sets: list[dict[str, str]]


@dataclass(frozen=True)
class Manifest:
    """A manifest that passed every check. ``output`` is ``s3://bucket/prefix`` or an absolute
    local directory; ``source_text`` is the YAML exactly as given, kept with the job."""

    path: Path | None
    source_text: str
    base_dir: Path
    name: str
    output: str
    budget_usd: Decimal | None
    priority: int
    defaults: Defaults
    image_sets: tuple[AnyImageSet, ...]
    prompts: tuple[Prompt, ...]
    matrix: Mapping[str, tuple[str, ...]]
    runs: tuple[RunSpec, ...] | None
    output_key: str
    locations: Locations = field(repr=False)
    # With a catalog: the bad rows it skipped (as ``file:line:col: field: message``) and the
    # ETags its S3 listing already gave (planning need not ask for them again).
    catalog: Catalog | None = None
    skipped_rows: tuple[str, ...] = ()
    s3_etags: Mapping[str, str] = field(default_factory=dict, repr=False)
    # The output key (without extension) of every run in plan order (``pair_runs``, then
    # option sets, then variants) with ``output_keys_specs``, as the checks rendered them;
    # planning with the same specs takes them from here instead of rendering them again.
    output_keys: tuple[str, ...] | None = field(default=None, repr=False, compare=False)
    output_keys_specs: Mapping[str, ModelSpec] | None = field(default=None, repr=False, compare=False)

    @property
    def catalog_vars(self) -> tuple[str, ...] | None:
        """The vars every catalog set has (prompts may use only these), or None without a catalog."""
        if self.catalog is None:
            return None
        return ("folder",) if self.catalog.prefix is not None else tuple(self.catalog.vars or ())

    @cached_property
    def output_template(self) -> Template:
        return Template.parse(self.output_key)

    @cached_property
    def _prompt_templates(self) -> dict[str, Template]:
        return {p.id: Template.parse(p.text) for p in self.prompts}

    @cached_property
    def _prompts_by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}

    @cached_property
    def _sets_by_id(self) -> dict[str, AnyImageSet]:
        return {s.id: s for s in self.image_sets}

    def local_path(self, ref: str) -> Path:
        """The absolute path of a local image reference (relative to the manifest's directory)."""
        return Path(os.path.abspath(self.base_dir / ref))

    def render_prompt(self, image_set: AnyImageSet, prompt: Prompt) -> str:
        return self._prompt_templates[prompt.id].render(image_set.vars)

    def render_output_keys(self, pair: PairRuns, options: Mapping[str, str]) -> list[str]:
        """The output keys (without extension) of the pair's runs with ``options``, one per
        variant in order; raises ``KeyError`` for a name the template uses and they lack."""
        image_set = pair.image_set
        values = {**options, **image_set.vars, "image_set": image_set.id, "prompt": pair.prompt.id}
        keys = []
        for variant in range(1, pair.variants + 1):
            values["variant"] = str(variant)
            keys.append(self.output_template.render(values))
        return keys

    def model_of(self, prompt: Prompt, entry: RunSpec | None = None) -> str:
        return (entry and entry.model) or prompt.model or self.defaults.model or DEFAULT_MODEL

    def variants_of(self, prompt: Prompt, entry: RunSpec | None = None) -> int:
        return (entry and entry.variants) or prompt.variants or self.defaults.variants or 1

    def pairs(self) -> Iterator[tuple[AnyImageSet, Prompt, RunSpec | None]]:
        """Image set × prompt pairs in plan order, with the run entry that named each (if any)."""
        if self.runs is None:
            for image_set in self.image_sets:
                for prompt in self.prompts:
                    yield image_set, prompt, None
            return
        for entry in self.runs:
            yield self._sets_by_id[entry.image_set], self._prompts_by_id[entry.prompt], entry

    def option_groups(self, prompt: Prompt, entry: RunSpec | None, specs: Mapping[str, ModelSpec]) -> list[dict[str, str]]:
        """Every resolved option set for one pair, in matrix order (pinned axes collapsed)."""
        spec = specs.get(self.model_of(prompt, entry))
        pinned = {**prompt.options, **(entry.options if entry else {})}
        base = {**(spec.defaults() if spec else {}), **self.defaults.options}
        axes = [(name, values) for name, values in self.matrix.items() if name not in pinned]
        return [
            {**base, **dict(zip([name for name, _ in axes], combo)), **pinned}
            for combo in itertools.product(*(values for _, values in axes))
        ]

    def pair_runs(self, specs: Mapping[str, ModelSpec]) -> Iterator[PairRuns]:
        """Each image set × prompt pair in plan order, with what its runs share.

        The option sets of one prompt (or run entry) are the same dicts for every pair it
        is in, for the whole iteration: read only, and their ids name them while it lasts.
        """
        groups: dict[tuple[int, int], tuple[str, int, list[dict[str, str]]]] = {}
        for image_set, prompt, entry in self.pairs():
            group_key = (id(prompt), id(entry))
            if group_key not in groups:
                groups[group_key] = (
                    self.model_of(prompt, entry),
                    self.variants_of(prompt, entry),
                    self.option_groups(prompt, entry, specs),
                )
            yield PairRuns(image_set, prompt, entry, *groups[group_key])


# --- Meaning: checks against the model specs -----------------------------------------------


class _Checker:
    """Semantic checks on structurally valid parts; appends issues, never stops early."""

    def __init__(
        self,
        manifest: Manifest,
        specs: Mapping[str, ModelSpec],
        issues: list[ManifestIssue],
        references: _References | None = None,
    ):
        self.m = manifest
        self.specs = specs
        self.issues = issues
        self.output_keys: list[str] | None = None  # every run's, when _output_keys rendered them all
        self.locations = manifest.locations
        self.references = references or _References(manifest.base_dir)
        self._reported: set[tuple[DocPath, str]] = set()

    def add(self, path: DocPath, message: str, *, key: bool = False) -> None:
        # A value checked against several models would otherwise repeat one issue.
        if (path, message) not in self._reported:
            self._reported.add((path, message))
            self.issues.append(self.locations.issue(path, message, key=key))

    def run(self) -> None:
        m = self.m
        # Catalog sets were checked row by row as they were read (ids, references, counts).
        inline = tuple(s for s in m.image_sets if isinstance(s, ImageSet))
        ids_ok = self._duplicates(inline, "image set") & self._duplicates(m.prompts, "prompt")
        refs_ok = self._run_references()
        pairs = self._pairs_to_check() if refs_ok else []
        self._models()
        before = len(self.issues)
        self._options(pairs)
        options_ok = len(self.issues) == before
        set_models: dict[int, set[str]] = {}
        catalog_models: set[str] = set()
        for image_set, prompt, entry in pairs:
            model = m.model_of(prompt, entry)
            if isinstance(image_set, CatalogSet):
                catalog_models.add(model)
            else:
                set_models.setdefault(id(image_set), set()).add(model)
        # Without valid pairs (all reported already), judge names by the models prompts name.
        used_models = set().union(catalog_models, *set_models.values()) or {m.model_of(p) for p in m.prompts}
        option_names = {name for spec in self._known_models(used_models) for name in spec.options}
        for image_set in inline:
            self._images(image_set, set_models.get(id(image_set), set()))
            self._var_names(image_set, option_names)
        if m.catalog_vars is not None:
            self._catalog_var_names(option_names)
        templates_ok = self._prompt_vars(pairs)
        # An unknown model (reported already) leaves its option names unknown too.
        key_ok = self._output_key_names(pairs, option_names if used_models <= set(self.specs) else None)
        # Colliding or unrenderable keys would only echo the issues above.
        if ids_ok and refs_ok and options_ok and templates_ok and key_ok:
            self._output_keys()

    def _pairs_to_check(self) -> list[tuple[AnyImageSet, Prompt, RunSpec | None]]:
        """Every pair of an inline image set, and one pair per prompt (or run entry) of the
        catalog's sets: those all declare the same vars and were judged as they were read,
        so the checks below would find the same in each of 100,000 rows."""
        pairs = []
        catalog_pairs: set[tuple[int, int]] = set()
        for image_set, prompt, entry in self.m.pairs():
            if isinstance(image_set, CatalogSet):
                if (id(prompt), id(entry)) in catalog_pairs:
                    continue
                catalog_pairs.add((id(prompt), id(entry)))
            pairs.append((image_set, prompt, entry))
        return pairs

    def _duplicates(self, items: tuple[ImageSet, ...] | tuple[Prompt, ...], label: str) -> bool:
        first: dict[str, int] = {}
        for item in items:
            line = self.locations.at(item._path + ("id",))[0]
            if item.id in first:
                self.add(item._path + ("id",), f"duplicate {label} id {item.id!r} (first at line {first[item.id]})")
            else:
                first[item.id] = line
        return len(first) == len(items)

    def _run_references(self) -> bool:
        ok = True
        sets = {s.id for s in self.m.image_sets}
        prompts = {p.id for p in self.m.prompts}
        for entry in self.m.runs or ():
            if entry.image_set not in sets:
                self.add(entry._path + ("image_set",), f"no image set has id {entry.image_set!r}")
                ok = False
            if entry.prompt not in prompts:
                self.add(entry._path + ("prompt",), f"no prompt has id {entry.prompt!r}")
                ok = False
        return ok

    def _known_models(self, models: set[str]) -> list[ModelSpec]:
        return [self.specs[name] for name in sorted(models) if name in self.specs]

    def _models(self) -> None:
        holders: list[_WithOptions] = [self.m.defaults, *self.m.prompts, *(self.m.runs or ())]
        for holder in holders:
            if holder.model is not None and holder.model not in self.specs:
                known = ", ".join(sorted(self.specs)) or "none"
                self.add(holder._path + ("model",), f"unknown model {holder.model!r} (known: {known})")

    def _options(self, pairs: list[tuple[AnyImageSet, Prompt, RunSpec | None]]) -> None:
        m = self.m
        all_models = {m.model_of(p, e) for _, p, e in pairs} or {m.defaults.model or DEFAULT_MODEL}
        prompt_models: dict[int, set[str]] = {}
        for _, prompt, entry in pairs:
            prompt_models.setdefault(id(prompt), set()).add(m.model_of(prompt, entry))
        self._check_holder(m.defaults, all_models)
        for prompt in m.prompts:
            self._check_holder(prompt, prompt_models.get(id(prompt), {m.model_of(prompt)}))
        for entry in m.runs or ():
            prompt = m._prompts_by_id.get(entry.prompt)
            model = m.model_of(prompt, entry) if prompt else entry.model or m.defaults.model or DEFAULT_MODEL
            self._check_holder(entry, {model})
        for name, values in m.matrix.items():
            for spec in self._known_models(all_models):
                if name not in spec.options:
                    self.add(("matrix", name), self._unknown_option(name, spec), key=True)
                    break
                seen: set[str] = set()
                for i, value in enumerate(values):
                    if value in seen:
                        self.add(("matrix", name, i), f"{value!r} is listed twice")
                    seen.add(value)
                    self._check_value(("matrix", name, i), name, value, spec)

    def _check_holder(self, holder: _WithOptions, models: set[str]) -> None:
        for name, value in holder.options.items():
            for spec in self._known_models(models):
                if name not in spec.options:
                    self.add(holder._path + (name,), self._unknown_option(name, spec), key=True)
                    break
                if not self._check_value(holder._path + (name,), name, value, spec):
                    break

    def _unknown_option(self, name: str, spec: ModelSpec) -> str:
        known = [*_FIELD_VOCABULARY, *spec.options]
        return _unknown_key(name, known) + f"; {spec.name} options are: {', '.join(spec.options)}"

    def _check_value(self, path: DocPath, name: str, value: str, spec: ModelSpec) -> bool:
        allowed = spec.options[name].values
        if value in allowed:
            return True
        self.add(path, f"{value!r} is not an allowed {name} for {spec.name} (allowed: {', '.join(allowed)})")
        return False

    def _images(self, image_set: ImageSet, models: set[str]) -> None:
        for spec in self._known_models(models):
            if len(image_set.images) > spec.max_images:
                self.add(
                    image_set._path + ("images",),
                    f"{len(image_set.images)} images; {spec.name} accepts at most {spec.max_images}",
                )
                break
        for i, ref in enumerate(image_set.images):
            problem = self.references.problem(ref)
            if problem:
                self.add(image_set._path + ("images", i), problem)

    def _var_names(self, image_set: ImageSet, option_names: set[str]) -> None:
        for name in image_set.vars:
            self._var_name(image_set._path + ("vars", name), name, option_names, key=True)

    def _var_name(self, path: DocPath, name: str, option_names: set[str], *, key: bool = False) -> None:
        if not _PLACEHOLDER.match(name):
            self.add(path, f"var name {name!r} must start with a letter or _ and use letters, digits, _ or -", key=key)
        elif name in RUN_FIELDS or name == "model" or name in option_names:
            self.add(path, f"var name {name!r} is reserved for the run's own {name}", key=key)

    def _catalog_var_names(self, option_names: set[str]) -> None:
        """A feed's var columns are var names for every row: checked once, where they are listed."""
        for i, name in enumerate(self.m.catalog.vars or () if self.m.catalog else ()):
            self._var_name(("catalog", "vars", i), name, option_names)

    def _catalog_prompts(self, pairs: list[tuple[AnyImageSet, Prompt, RunSpec | None]]) -> set[int]:
        """The prompts (by identity) that meet catalog sets, however many rows were usable."""
        if self.m.catalog_vars is None:
            return set()
        if self.m.runs is None:
            return {id(p) for p in self.m.prompts}
        return {id(prompt) for image_set, prompt, _ in pairs if isinstance(image_set, CatalogSet)}

    def _not_a_catalog_var(self, name: str) -> str:
        declared = self.m.catalog_vars or ()
        if self.m.catalog is not None and self.m.catalog.prefix is not None:
            return f"{{{name}}} is not a var of the catalog's sets: a folder catalog has only {{folder}}"
        listed = f" (it lists {', '.join(declared)})" if declared else ""
        return f"{{{name}}} is not a catalog var: name its column in catalog.vars{listed}"

    def _prompt_vars(self, pairs: list[tuple[AnyImageSet, Prompt, RunSpec | None]]) -> bool:
        ok = True
        paired: dict[int, list[ImageSet]] = {}
        catalog_prompts = self._catalog_prompts(pairs)
        for image_set, prompt, _ in pairs:
            if isinstance(image_set, CatalogSet):
                continue
            sets = paired.setdefault(id(prompt), [])
            if not sets or sets[-1] is not image_set:
                sets.append(image_set)
        for prompt in self.m.prompts:
            path = prompt._path + ("text",)
            try:
                template = Template.parse(prompt.text)
            except ValueError as exc:
                self.add(path, str(exc))
                ok = False
                continue
            for name in template.names:
                lacking = list(dict.fromkeys(s.id for s in paired.get(id(prompt), ()) if name not in s.vars))
                if lacking:
                    self.add(path, f"{{{name}}} is not a var of {_sets_phrase(lacking)}")
                    ok = False
                if id(prompt) in catalog_prompts and name not in (self.m.catalog_vars or ()):
                    self.add(path, self._not_a_catalog_var(name))
                    ok = False
        return ok

    def _output_key_names(
        self, pairs: list[tuple[AnyImageSet, Prompt, RunSpec | None]], options: set[str] | None
    ) -> bool:
        path: DocPath = ("output_key",)
        try:
            template = Template.parse(self.m.output_key)
        except ValueError as exc:
            self.add(path, str(exc))
            return False
        # The template's own text can make every key unsafe (``../{image_set}``, ``/abs``):
        # say so even when other errors hold back the per-run check.
        static_problem = _unsafe_key(template.render({name: "x" for name in template.names}))
        if static_problem is not None:
            self.add(path, f"{self.m.output_key!r} {static_problem}")
            return False
        used_sets = list({id(s): s for s, _, _ in pairs if isinstance(s, ImageSet)}.values())
        catalog_used = bool(self._catalog_prompts(pairs))
        ok = True
        for name in template.names:
            if name in RUN_FIELDS or options is None or name in options or not (used_sets or catalog_used):
                continue
            lacking = [s.id for s in used_sets if name not in s.vars]
            catalog_lacks = catalog_used and name not in (self.m.catalog_vars or ())
            if len(lacking) == len(used_sets) and (catalog_lacks or not catalog_used):
                known = ", ".join([*RUN_FIELDS, *sorted(options)])
                self.add(path, f"unknown name {{{name}}}: use {known} or a var of every image set")
                ok = False
                continue
            if lacking:
                self.add(path, f"{{{name}}} is not a var of {_sets_phrase(lacking)}")
                ok = False
            if catalog_lacks:
                self.add(path, self._not_a_catalog_var(name))
                ok = False
        return ok

    def _output_keys(self) -> None:
        """Render the output key of every planned run: each must be safe and used once.

        Uniqueness is checked without the extension: the ``.json`` sidecar sits beside each
        output as ``<output_key>.json``, so two formats under one key would still collide.
        """
        path: DocPath = ("output_key",)
        first: dict[str, tuple[PairRuns, Mapping[str, str], int]] = {}
        rendered: list[str] | None = []
        reported = 0
        hidden = 0
        for pair in self.m.pair_runs(self.specs):
            for options in pair.option_sets:
                try:
                    keys = self.m.render_output_keys(pair, options)
                except KeyError:
                    rendered = None  # an unknown model leaves spec defaults unresolved; reported already
                    continue
                if rendered is not None:
                    rendered.extend(keys)
                for variant, key in enumerate(keys, start=1):
                    problem = _unsafe_key(key)
                    if problem is None and key not in first:
                        first[key] = (pair, options, variant)
                        continue
                    if reported >= _MAX_RUN_ISSUES:
                        hidden += 1
                        continue
                    reported += 1
                    run = _describe(pair, options, variant)
                    if problem is not None:
                        self.add(path, f"{key!r} for {run} {problem}")
                    else:
                        self.add(path, f"{key!r} is the output of two runs: {_describe(*first[key])} and {run}")
        if hidden:
            self.add(path, f"and {hidden} more runs with an unsafe or shared output key")
        self.output_keys = rendered


def _sets_phrase(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:3])
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return f"image set {shown}" if len(ids) == 1 else f"image sets {shown}{more}"


def _describe(pair: PairRuns, options: Mapping[str, str], variant: int) -> str:
    described = " ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return f"(image_set={pair.image_set.id} prompt={pair.prompt.id} variant={variant} {described})"


def _unsafe_key(key: str) -> str | None:
    """Why ``key`` could escape the output root or be read two ways, or None when it is safe."""
    if "\\" in key:
        return "contains a backslash"
    if key.startswith("/"):
        return "is absolute"
    if _CONTROL.search(key):
        return "contains a control character"
    segments = key.split("/")
    if "" in segments:
        return "has an empty segment"
    if "." in segments or ".." in segments:
        return "has a '.' or '..' segment"
    return None


def _resolve_output(output: str, base_dir: Path) -> tuple[str | None, str | None]:
    """(resolved output, problem): ``s3://bucket[/prefix]`` as written, or an absolute directory."""
    if output.startswith("s3://"):
        bucket = output[len("s3://") :].split("/", 1)[0]
        return (output.rstrip("/"), None) if bucket else (None, "an s3 output needs a bucket: s3://bucket/prefix")
    if "://" in output:
        return None, "output is s3://bucket/prefix or a local directory"
    return os.path.abspath(base_dir / os.path.expanduser(output)), None


class _References:
    """Whether an image reference can be fetched: a well-formed s3:// URI or http(s) URL, or a
    local file (relative to the manifest) that exists, each file looked at once."""

    def __init__(self, base_dir: Path):
        self.base_dir = base_dir
        self._files: dict[str, str | None] = {}

    def problem(self, ref: str) -> str | None:
        kind = image_kind(ref)
        if kind == "s3":
            bucket, _, key = ref[len("s3://") :].partition("/")
            return None if bucket and key else f"{ref!r} is not an s3://bucket/key URI"
        if kind == "https":
            host = ref.split("://", 1)[1].split("/", 1)[0]
            return None if host else f"{ref!r} has no host"
        if "://" in ref:
            return f"{ref!r}: images are local paths, s3:// URIs or http(s) URLs"
        if ref not in self._files:
            path = os.path.abspath(os.path.join(self.base_dir, ref))
            self._files[ref] = None if os.path.isfile(path) else f"no file {ref!r} (looked for {path})"
        return self._files[ref]


# --- Catalogs: rows judged one by one --------------------------------------------------------


class _CatalogReader:
    """Turns a catalog's entries (``catalog.py``) into ``CatalogSet``s, judging each on its own.

    A row (or folder) is bad when it has no id, an id another image set already has or that
    cannot be part of an output key, no image, an image reference that cannot be fetched, or
    more images than a model it meets accepts. Its issue is located in the feed
    (``feed:line:1: column: message``), or for a folder at the manifest's ``catalog.prefix``.
    Whatever stops the whole catalog (an unreadable feed, a missing column) is located at the
    manifest's own lines.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        sources: Sources,
        references: _References,
        locations: Locations,
        label: str,
        inline_ids: set[str],
        limit: ModelSpec | None,
    ):
        self.catalog = catalog
        self.sources = sources
        self.references = references
        self.locations = locations
        self.label = label
        self.limit = limit
        self.s3_etags: dict[str, str] = {}
        # id → the line of the row that has it (0: an inline set) to name the first of two.
        self._seen: dict[str, int] = dict.fromkeys(inline_ids, 0)

    def read(self, issues: list[ManifestIssue]) -> tuple[list[CatalogSet], list[str]]:
        """The catalog's sets and its skipped rows; with ``on_bad_row: fail``, bad rows are
        appended to ``issues`` instead (at most ``_MAX_RUN_ISSUES`` of them, then a count)."""
        sets: list[CatalogSet] = []
        skipped: list[str] = []
        failed = 0
        for item in self._judged(issues):
            if isinstance(item, CatalogSet):
                sets.append(item)
            elif self.catalog.on_bad_row != "fail":
                skipped.append(str(item))
            else:
                failed += 1
                if failed <= _MAX_RUN_ISSUES:
                    issues.append(item)
        if failed > _MAX_RUN_ISSUES:
            path: DocPath = ("catalog", "feed") if self.catalog.feed is not None else ("catalog", "prefix")
            message = f"{failed} bad rows (on_bad_row: fail); the first {_MAX_RUN_ISSUES} follow"
            issues.append(self.locations.issue(path, message))
        return sets, skipped

    def _judged(self, issues: list[ManifestIssue]) -> Iterator[CatalogSet | ManifestIssue]:
        c = self.catalog
        if c.feed is not None:
            source: DocPath = ("catalog", "feed")
            entries = read_feed(
                c.feed, self.sources, id_column=c.id or "", image_columns=c.images or (), var_columns=c.vars or ()
            )
        else:
            source = ("catalog", "prefix")
            entries = read_folder(c.prefix or "", c.pattern or "", self.sources)
        try:
            for entry in entries:
                yield self._judge(entry)
        except MissingColumns as exc:
            header = ", ".join(exc.header[:20]) + (", …" if len(exc.header) > 20 else "")
            for column in exc.columns:
                message = f"no column {column!r} in {self.label} (its header has: {header})"
                issues.append(self.locations.issue(self._column_path(column), message))
        except CatalogUnreadable as exc:
            issues.append(self.locations.issue(source, str(exc)))

    def _column_path(self, column: str) -> DocPath:
        c = self.catalog
        if column == c.id:
            return ("catalog", "id")
        for where, names in (("images", c.images or ()), ("vars", c.vars or ())):
            if column in names:
                return ("catalog", where, list(names).index(column))
        return ("catalog",)

    def _judge(self, entry: Entry) -> CatalogSet | ManifestIssue:
        if entry.problem is not None:
            return self._bad(entry, *entry.problem)
        id_field = self.catalog.id or "folder"
        if not entry.id:
            if self.catalog.feed is None:
                return self._bad(entry, id_field, "files at the top of the prefix match; image sets are folders (e.g. */*.jpg)")
            return self._bad(entry, id_field, "no id: the cell is empty")
        unsafe = _unsafe_key(entry.id)
        if unsafe is not None:
            return self._bad(entry, id_field, f"id {entry.id!r} {unsafe}; ids are part of output keys")
        if entry.id in self._seen:
            first = self._seen[entry.id]
            where = f"first at line {first}" if first else "an inline image set has it"
            return self._bad(entry, id_field, f"duplicate image set id {entry.id!r} ({where})")
        if not entry.images:
            columns = self.catalog.images or []
            return self._bad(entry, "images", f"no image: {', '.join(columns)} {'is' if len(columns) == 1 else 'are'} empty")
        if self.catalog.feed is not None:
            for column, ref in entry.images:
                problem = self.references.problem(ref)
                if problem is not None:
                    return self._bad(entry, column, problem)
        if self.limit is not None and len(entry.images) > self.limit.max_images:
            limit = f"{self.limit.name} accepts at most {self.limit.max_images}"
            return self._bad(entry, "images", f"{len(entry.images)} images; {limit}")
        images = tuple([ref for _, ref in entry.images])
        if entry.etags:
            self.s3_etags.update(zip(images, entry.etags))
        self._seen[entry.id] = entry.line
        return CatalogSet(entry.id, images, entry.vars, entry.line)

    def _bad(self, entry: Entry, column: str, message: str) -> ManifestIssue:
        if self.catalog.feed is not None:
            return ManifestIssue(self.label, entry.line, 1, column, message)
        return self.locations.issue(("catalog", "prefix"), f"folder {entry.id!r}: {message}" if entry.id else message)


def _feed_label(feed: str, filename: str) -> str:
    """How issues name a feed: a local one beside the manifest as the manifest is named."""
    if "://" in feed or os.path.isabs(feed) or "://" in filename:
        return feed
    return os.path.normpath(os.path.join(os.path.dirname(filename), os.path.expanduser(feed)))


def _max_images_spec(
    defaults: Defaults, prompts: tuple[Prompt, ...], runs: tuple[RunSpec, ...] | None, specs: Mapping[str, ModelSpec]
) -> ModelSpec | None:
    """Of the models any prompt or run may use, the one accepting the fewest images."""
    models = {p.model or defaults.model or DEFAULT_MODEL for p in prompts} | {e.model for e in runs or () if e.model}
    known = [specs[name] for name in sorted(models) if name in specs]
    return min(known, key=lambda spec: spec.max_images) if known else None


# --- Putting it together -------------------------------------------------------------------


def _try(model: type[_Strict], value: Any, path: DocPath) -> Any:
    """``value`` as ``model``, without the fields that fail (already reported), or None when
    even that fails: a prompt with a bad ``variants`` still gets its text checked."""
    if not isinstance(value, dict):
        return None
    try:
        item = model.model_validate(value)
    except ValidationError as exc:
        broken = {error["loc"][0] for error in exc.errors() if error["loc"]}
        try:
            item = model.model_validate({k: v for k, v in value.items() if k not in broken})
        except ValidationError:
            return None
    item._path = path
    return item


def _located(items: list[Any] | None, where: str) -> tuple[Any, ...]:
    for i, item in enumerate(items or ()):
        item._path = (where, i)
    return tuple(items or ())


def _parse(
    text: str,
    filename: str,
    base_dir: Path,
    specs: Mapping[str, ModelSpec],
    path: Path | None,
    settings: Settings | None,
) -> Manifest:
    data, locations, issues = _read_yaml(text, filename)
    if data is None:
        raise ManifestError(issues)
    if not isinstance(data, dict):
        issues.append(locations.issue((), "the manifest must be a mapping of fields (version, name, output, …)"))
        raise ManifestError(issues)

    doc: ManifestDoc | None = None
    try:
        doc = ManifestDoc.model_validate(data)
    except ValidationError as exc:
        issues.extend(_pydantic_issue(error, locations) for error in exc.errors())

    if doc is not None:
        doc.defaults._path = ("defaults",)
        defaults, matrix, output_key = doc.defaults, doc.matrix, doc.output_key
        image_sets = _located(doc.image_sets, "image_sets")
        prompts = _located(doc.prompts, "prompts")
        runs = _located(doc.runs, "runs") if doc.runs is not None else None
        catalog = doc.catalog
    else:
        # Salvage what is structurally sound so that semantic mistakes are reported too.
        defaults = _try(Defaults, data.get("defaults", {}), ("defaults",)) or Defaults()
        image_sets = _salvage(ImageSet, data.get("image_sets"), "image_sets")
        prompts = _salvage(Prompt, data.get("prompts"), "prompts")
        runs = _salvage(RunSpec, data.get("runs"), "runs") if "runs" in data else None
        matrix = _salvage_matrix(data.get("matrix"))
        raw_key = data.get("output_key", DEFAULT_OUTPUT_KEY)
        output_key = raw_key if isinstance(raw_key, str) else DEFAULT_OUTPUT_KEY
        catalog = _try(Catalog, data["catalog"], ("catalog",)) if "catalog" in data else None

    version = _as_value(data.get("version"))
    if isinstance(version, int) and not isinstance(version, bool) and version != SUPPORTED_VERSION:
        issues.append(locations.issue(("version",), f"version {version} is not supported; this editpipe reads version 1"))
    if "catalog" not in data and "image_sets" not in data:
        issues.append(locations.issue(("image_sets",), "required field is missing (or a catalog)"))
    output = None
    if isinstance(data.get("output"), str):
        output, problem = _resolve_output(data["output"], base_dir)
        if problem:
            issues.append(locations.issue(("output",), problem))

    references = _References(base_dir)
    catalog_sets: list[CatalogSet] = []
    skipped: list[str] = []
    s3_etags: dict[str, str] = {}
    if catalog is not None:
        reader = _CatalogReader(
            catalog,
            sources=Sources(base_dir, settings),
            references=references,
            locations=locations,
            label=_feed_label(catalog.feed, filename) if catalog.feed is not None else filename,
            inline_ids={s.id for s in image_sets},
            limit=_max_images_spec(defaults, prompts, runs, specs),
        )
        catalog_sets, skipped = reader.read(issues)
        s3_etags = reader.s3_etags

    manifest = Manifest(
        path=path,
        source_text=text,
        base_dir=base_dir,
        name=doc.name if doc else "",
        output=output or "",
        budget_usd=doc.budget_usd if doc else None,
        priority=doc.priority if doc else 0,
        defaults=defaults,
        image_sets=(*image_sets, *catalog_sets),
        prompts=prompts,
        matrix={name: tuple(values) for name, values in matrix.items()},
        runs=runs,
        output_key=output_key,
        locations=locations,
        catalog=catalog,
        skipped_rows=tuple(skipped),
        s3_etags=s3_etags,
    )
    checker = _Checker(manifest, specs, issues, references)
    checker.run()
    if issues:
        # The manifest's own issues first, then those located in a feed.
        raise ManifestError(sorted(issues, key=lambda i: (i.file != filename, i.line, i.col)))
    if checker.output_keys is None:
        return manifest
    return replace(manifest, output_keys=tuple(checker.output_keys), output_keys_specs=specs)


def _salvage(model: type[_Strict], value: Any, where: str) -> tuple[Any, ...]:
    if not isinstance(value, list):
        return ()
    items = (_try(model, item, (where, i)) for i, item in enumerate(value))
    return tuple(item for item in items if item is not None)


def _salvage_matrix(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict):
        return {}
    adapter = TypeAdapter(Matrix)
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        broken = {error["loc"][0] for error in exc.errors() if error["loc"]}
    return adapter.validate_python({k: v for k, v in value.items() if k not in broken})


def parse_manifest(
    text: str, filename: str, base_dir: Path, specs: Mapping[str, ModelSpec], settings: Settings | None = None
) -> Manifest:
    """Validate manifest text not on disk (e.g. fetched from S3).

    ``filename`` names it in issues; local paths (images, a local output, a local catalog)
    resolve against ``base_dir``. ``settings`` reach an ``s3://`` catalog (without them it
    is an issue). Raises ``ManifestError`` with every issue found.
    """
    with gc_paused():
        return _parse(text, filename, base_dir, specs, None, settings)


def load_manifest(path: Path, specs: Mapping[str, ModelSpec], settings: Settings | None = None) -> Manifest:
    """Read and validate the manifest at ``path``; issues name the file as given.

    A ``catalog`` is read here (streamed, row by row); ``settings`` reach an ``s3://`` one.
    Raises ``ManifestError`` with every issue found (an unreadable file is one issue).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError([ManifestIssue(str(path), 1, 1, "manifest", f"cannot read the manifest: {exc}")]) from None
    with gc_paused():
        return _parse(text, str(path), Path(os.path.abspath(path.parent)), specs, path, settings)


def manifest_json_schema(specs: Mapping[str, ModelSpec] | None = None) -> dict[str, Any]:
    """JSON Schema (2020-12) of a version 1 manifest, for editors.

    With ``specs``, request options are listed by name with the values the default model
    accepts, and ``model`` lists the known models; without, options are any string.
    """
    schema = ManifestDoc.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["properties"]["version"]["const"] = SUPPORTED_VERSION
    spec = (specs or {}).get(DEFAULT_MODEL) or next(iter((specs or {}).values()), None)
    if spec is None:
        return schema
    option_props = {
        name: {"type": "string", "enum": list(opt.values), "description": f"default: {opt.default}"}
        for name, opt in spec.options.items()
    }
    for def_name in ("Defaults", "Prompt", "RunSpec"):
        definition = schema["$defs"][def_name]
        definition["properties"].update(option_props)
        definition["properties"]["model"] = {"type": "string", "enum": sorted(specs or {})}
        definition["additionalProperties"] = False
    schema["properties"]["matrix"] = {
        "type": "object",
        "description": schema["properties"]["matrix"].get("description", ""),
        "properties": {
            name: {"type": "array", "minItems": 1, "items": {"type": "string", "enum": list(opt.values)}}
            for name, opt in spec.options.items()
        },
        "additionalProperties": False,
    }
    return schema
