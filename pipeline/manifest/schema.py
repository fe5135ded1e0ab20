"""The structure of a manifest as written (manifest.md, version 1), as pydantic models.

The models check structure and types, and give the JSON Schema editors use
(``manifest_json_schema``); what the values mean (known models, allowed option values,
vars) is judged afterwards by ``checks``. Every field unwraps the YAML scalars of
``reader`` itself, so text stays as written. ``Text``, ``NonEmptyText``, ``Money`` and
``pydantic_issue`` serve any document read with ``reader`` (the schedules file too).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictInt,
    model_validator,
)

from ..errors import ManifestIssue
from ..modelspec import DEFAULT_MODEL, ModelSpec
from .reader import DocPath, Locations, Scalar, as_text, as_value, field_name

SUPPORTED_VERSION = 1
DEFAULT_OUTPUT_KEY = "{image_set}/{prompt}/{aspect_ratio}/{variant}"
# Names output_key knows besides request options and vars.
RUN_FIELDS = ("image_set", "prompt", "variant")

_NAME_PATTERN = r"^[A-Za-z0-9_-]+$"


def _as_decimal_text(value: Any) -> Any:
    if isinstance(value, Scalar) and isinstance(value.value, (int, float)) and not isinstance(value.value, bool):
        return value.source
    return value


# Constraints come before the validator that unwraps YAML scalars: placed after it, pydantic
# still enforces them but leaves them out of the JSON Schema.
Text = Annotated[str, BeforeValidator(as_text)]
NonEmptyText = Annotated[str, Field(min_length=1), BeforeValidator(as_text)]
Int = Annotated[StrictInt, BeforeValidator(as_value)]
Variants = Annotated[StrictInt, Field(ge=1, description="Independent runs per combination."), BeforeValidator(as_value)]
Money = Annotated[Decimal, Field(gt=0), BeforeValidator(_as_decimal_text)]
ModelName = Annotated[str, Field(description="Provider model; a spec under configs/models must exist."), BeforeValidator(as_text)]


class Strict(BaseModel):
    """A mapping with only the fields its model names. ``_path`` is where the item was
    written (set after validation), so that later checks can point at it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    _path: DocPath = PrivateAttr(default=())


class WithOptions(Strict):
    """A mapping that may also set request options; their names come from the model spec."""

    model_config = ConfigDict(extra="allow", frozen=True)
    __pydantic_extra__: dict[str, Text] = Field(init=False)

    model: ModelName | None = None
    variants: Variants | None = None

    @property
    def options(self) -> dict[str, str]:
        """The request options set here (names not yet checked against a spec)."""
        return self.__pydantic_extra__


class Defaults(WithOptions):
    """Request options, model and variants for every run (all optional)."""


class ImageSet(Strict):
    """Reference images for one subject, and the vars its prompts may use."""

    id: NonEmptyText
    images: Annotated[
        list[Text],
        Field(min_length=1, description="Local paths (relative to the manifest), s3:// URIs or http(s) URLs."),
    ]
    vars: dict[str, Text] = Field(default_factory=dict)


class Prompt(WithOptions):
    """An edit instruction; ``{name}`` refers to the paired image set's vars."""

    id: NonEmptyText
    text: NonEmptyText


class RunSpec(WithOptions):
    """One hand-picked image set × prompt pair, optionally overriding options."""

    image_set: Text
    prompt: Text


class Catalog(Strict):
    """Image sets from a feed (``feed``, ``id``, ``images``…) or a folder (``prefix``, ``pattern``)."""

    feed: Annotated[Text, Field(description="A .csv or .jsonl: local path, https URL or s3:// URI.")] | None = None
    id: Annotated[Text, Field(description="The feed column naming each image set.")] | None = None
    images: Annotated[list[Text], Field(min_length=1, description="Columns of image references.")] | None = None
    vars: Annotated[list[Text], Field(description="Columns usable as {name} in prompts.")] | None = None
    on_bad_row: Annotated[Literal["skip", "fail"], BeforeValidator(as_text)] | None = None
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

# The publish block (an editpipe extension; resolved by ``publish``).
CHECK_NAMES = ("aspect_ratio", "min_size", "not_nsfw", "changed")
Review = Literal["required", "auto"]


def _unwrap_check(value: Any) -> Any:
    """A check as written: a bare name, or ``{min_size: N}`` (its YAML scalars unwrapped)."""
    if isinstance(value, Scalar):
        return value.source
    if isinstance(value, dict):
        return {as_text(k): v.value if isinstance(v, Scalar) else v for k, v in value.items()}
    return value


def _known_check(value: str | dict[str, Any]) -> str | dict[str, Any]:
    if isinstance(value, str):
        if value == "min_size":
            raise ValueError("min_size needs the least long side in pixels: `min_size: 1024`")
        if value not in CHECK_NAMES:
            raise ValueError(f"unknown check {value!r} (known: {', '.join(CHECK_NAMES)})")
        return value
    if list(value) != ["min_size"]:
        raise ValueError(f"a check is a name ({', '.join(CHECK_NAMES)}) or `min_size: N`")
    size = value["min_size"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError("min_size must be a whole number of pixels, at least 1")
    return value


CheckItem = Annotated[str | dict[str, Any], BeforeValidator(_unwrap_check), AfterValidator(_known_check)]


def _unique_checks(checks: list[str | dict[str, Any]]) -> list[str | dict[str, Any]]:
    names = [c if isinstance(c, str) else next(iter(c)) for c in checks]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"check {', '.join(repeated)} is listed twice")
    return checks


class PublishDoc(Strict):
    """Where approved outputs go, whether a person reviews them first, and the checks every
    output gets when it is collected."""

    to: Annotated[NonEmptyText, Field(description="s3://bucket/prefix/{image_set}/{prompt} or a local folder: a "
                                                  "template like output_key; the output's extension is added.")]
    review: Annotated[Review, BeforeValidator(as_text)] = "required"
    checks: Annotated[list[CheckItem], AfterValidator(_unique_checks),
                      Field(description="aspect_ratio, min_size: N, not_nsfw, changed")] = Field(default_factory=list)


class ManifestDoc(Strict):
    """A manifest as written, version 1 (see manifest.md)."""

    version: Annotated[Int, Field(description="Manifest format version; must be 1.")]
    name: Annotated[
        str, Field(pattern=_NAME_PATTERN, description="A label: letters, digits, - and _."), BeforeValidator(as_text)
    ]
    output: Annotated[Text, Field(description="s3://bucket/prefix, or a local directory relative to the manifest.")]
    budget_usd: Money | None = Field(default=None, description="The job never spends more than this (USD).")
    priority: Int = 0
    max_runs: Annotated[
        StrictInt,
        Field(ge=1, description="Runs this job may have (an editpipe extension; default 1,000,000)."),
        BeforeValidator(as_value),
    ] | None = None
    defaults: Defaults = Field(default_factory=Defaults)
    image_sets: Annotated[list[ImageSet], Field(min_length=1)] | None = None
    catalog: Catalog | None = None
    prompts: Annotated[list[Prompt], Field(min_length=1)]
    matrix: Matrix = Field(default_factory=dict, description="Option values crossed with every pair.")
    runs: Annotated[list[RunSpec], Field(min_length=1)] | None = None
    output_key: Text = Field(default=DEFAULT_OUTPUT_KEY, description="Where each output goes, before its extension.")
    publish: PublishDoc | None = Field(default=None, description="Where approved outputs go, review and checks "
                                                                 "(an editpipe extension).")


# Every field name a manifest knows, for "did you mean" hints.
FIELD_VOCABULARY = sorted(
    {name for model in (ManifestDoc, Defaults, ImageSet, Prompt, RunSpec, Catalog, PublishDoc)
     for name in model.model_fields}
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


def pydantic_issue(error: Mapping[str, Any], locations: Locations) -> ManifestIssue:
    """One pydantic error (an item of ``ValidationError.errors()``) as a located issue, at
    the deepest node of its ``loc`` that was written; an unknown key is hinted from the
    manifest's field names."""
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
        return locations.issue(path, unknown_key(str(loc[-1]), FIELD_VOCABULARY), key=True)
    if kind in _MESSAGES:
        message = _MESSAGES[kind]
    elif kind == "string_pattern_mismatch":
        message = f"{error['input']!r} must match {ctx.get('pattern')}"
    elif kind == "literal_error":
        message = f"must be {ctx.get('expected')}"
    elif kind == "value_error":
        message = str(ctx.get("error", error["msg"]))
    elif kind in ("greater_than", "greater_than_equal"):
        message = f"must be {'greater than' if kind == 'greater_than' else 'at least'} {ctx.get('gt', ctx.get('ge'))}"
    else:
        message = error["msg"]
    return locations.issue(path, message)


def unknown_key(name: str, known: list[str]) -> str:
    """``unknown key 'nmae'``, with the closest of ``known`` as a hint when one is close."""
    close = difflib.get_close_matches(name, known, n=1)
    return f"unknown key {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


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
