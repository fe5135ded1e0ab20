"""Manifests: the YAML a user writes (manifest.md, version 1), loaded and validated in full.

``load_manifest`` either returns a ``Manifest`` that plans without surprises, or raises
``ManifestError`` carrying every issue found, each located at the offending YAML node as
``file:line:col: field: message``. Pydantic models check structure and types (and give the
JSON Schema editors use); the model specs decide meaning: known models, allowed option
values, vars every paired image set defines, output keys that are safe and unique.

A ``catalog`` (a CSV/JSONL feed or a folder of product folders, parsed by ``feeds`` from
the ``CatalogSources`` the caller passes) adds ``CatalogSet``s after the inline image sets,
each row judged as it is read.

Modules, each about one thing:

- ``reader``: YAML read with the line and column of every node (used by the schedules
  file too);
- ``schema``: the pydantic models of a manifest as written, and its JSON Schema;
- ``template``: ``{name}`` templates, and what makes an output key safe;
- ``publish``: the ``publish`` block resolved (``PublishSpec``: where approved outputs go,
  review, the checks at collection), and how a job's record keeps it;
- ``value``: the validated ``Manifest`` and ``CatalogSet``;
- ``checks``: what the values mean, against the model specs;
- ``feeds``: a catalog's feed rows and folders parsed, and what opens their locations;
- ``catalog_rows``: a catalog's rows judged one by one;
- ``references``: whether an image reference can be fetched (a local one: an image the
  provider accepts, by its header);
- ``load``: the steps put together.

Domain layer: imports ``errors``, ``modelspec``, ``plan`` (which runs a manifest means:
the checks judge the output keys of exactly those) and ``size`` (how many, by arithmetic:
a manifest over its cap of runs is refused before any is expanded), numpy (to sort the
hashes of output keys, finding repeats in bounded memory) and Pillow to read an
image's header; never a layer above; what reads a feed
over the network is passed in (``pipeline.catalog.Sources``).
"""

from ..errors import ManifestError, ManifestIssue
from .load import load_manifest, parse_manifest
from .reader import DocPath, Locations, Scalar, as_text, as_value, field_name, read_yaml
from .schema import (
    DEFAULT_OUTPUT_KEY,
    RUN_FIELDS,
    SUPPORTED_VERSION,
    Catalog,
    Defaults,
    ImageSet,
    ManifestDoc,
    Money,
    NonEmptyText,
    Prompt,
    RunSpec,
    Text,
    manifest_json_schema,
    pydantic_issue,
)
from .template import Template, unsafe_key
from .value import AnyImageSet, CatalogSet, Manifest

__all__ = [
    "DEFAULT_OUTPUT_KEY",
    "RUN_FIELDS",
    "SUPPORTED_VERSION",
    "AnyImageSet",
    "Catalog",
    "CatalogSet",
    "Defaults",
    "DocPath",
    "ImageSet",
    "Locations",
    "Manifest",
    "ManifestDoc",
    "ManifestError",
    "ManifestIssue",
    "Money",
    "NonEmptyText",
    "Prompt",
    "RunSpec",
    "Scalar",
    "Template",
    "Text",
    "as_text",
    "as_value",
    "field_name",
    "load_manifest",
    "manifest_json_schema",
    "parse_manifest",
    "pydantic_issue",
    "read_yaml",
    "unsafe_key",
]
