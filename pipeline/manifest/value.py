"""The validated manifest: ``Manifest``, and ``CatalogSet`` for the image sets a catalog adds.

A ``Manifest`` holds what the user wrote, resolved (the output root, local paths) and
checked; which runs it means is ``pipeline.plan``'s to say (pairs × matrix × variants, the
precedence of options, output keys).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cached_property
from pathlib import Path

from .publish import PublishSpec
from .reader import Locations
from .schema import Catalog, Defaults, ImageSet, Prompt, RunSpec
from .template import Template


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
    # Where approved outputs go, and the checks at collection (an editpipe extension).
    publish: PublishSpec | None = None

    @property
    def catalog_vars(self) -> tuple[str, ...] | None:
        """The vars every catalog set has (prompts may use only these), or None without a catalog."""
        if self.catalog is None:
            return None
        return ("folder",) if self.catalog.prefix is not None else tuple(self.catalog.vars or ())

    @cached_property
    def output_template(self) -> Template:
        return Template.parse(self.output_key)

    def prompt_template(self, prompt: Prompt) -> Template:
        return self._prompt_templates[prompt.id]

    @cached_property
    def _prompt_templates(self) -> dict[str, Template]:
        return {p.id: Template.parse(p.text) for p in self.prompts}

    @cached_property
    def prompts_by_id(self) -> dict[str, Prompt]:
        return {p.id: p for p in self.prompts}

    @cached_property
    def sets_by_id(self) -> dict[str, AnyImageSet]:
        return {s.id: s for s in self.image_sets}

    def local_path(self, ref: str) -> Path:
        """The absolute path of a local image reference (relative to the manifest's directory)."""
        return Path(os.path.abspath(self.base_dir / ref))
