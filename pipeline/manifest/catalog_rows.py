"""A catalog's rows (or folders), read by ``feeds`` and judged here one by one.

A row without a usable image or id is a bad row: skipped (and listed in
``Manifest.skipped_rows``) or an issue located in the feed, as ``on_bad_row`` says. What
every row shares (the columns, the vars prompts may use) is judged once, at the manifest's
own lines, by the checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

from ..errors import CatalogUnreadable, ManifestIssue, MissingColumns
from ..modelspec import ModelSpec
from ..plan import model_of
from .checks.context import MAX_RUN_ISSUES
from .feeds import CatalogSources, Entry, FeedNotText, read_feed, read_folder
from .reader import DocPath, Locations
from .references import References
from .schema import Catalog, Defaults, Prompt, RunSpec
from .template import unsafe_key
from .value import CatalogSet


class CatalogReader:
    """Turns a catalog's entries into ``CatalogSet``s, judging each on its own.

    A row (or folder) is bad when it has no id, an id another image set already has or that
    cannot be part of an output key, no image, an image reference that cannot be fetched (a
    local file that is not an image the provider accepts, judged by its header), or more
    images than a model it meets accepts. Its issue is located in the feed
    (``feed:line:1: column: message``), or for a folder at the manifest's ``catalog.prefix``.
    Whatever stops the whole catalog (an unreadable feed, a missing column) is located at the
    manifest's own lines.
    """

    def __init__(
        self,
        catalog: Catalog,
        *,
        sources: CatalogSources,
        base_dir: Path,
        references: References,
        locations: Locations,
        label: str,
        inline_ids: set[str],
        limit: ModelSpec | None,
    ):
        self.catalog = catalog
        self.sources = sources
        self.base_dir = base_dir
        self.references = references
        self.locations = locations
        self.label = label
        self.limit = limit
        self.s3_etags: dict[str, str] = {}
        # id → the line of the row that has it (0: an inline set) to name the first of two.
        self._seen: dict[str, int] = dict.fromkeys(inline_ids, 0)

    def read(self, issues: list[ManifestIssue]) -> tuple[list[CatalogSet], list[str]]:
        """The catalog's sets and its skipped rows; with ``on_bad_row: fail``, bad rows are
        appended to ``issues`` instead (at most ``MAX_RUN_ISSUES`` of them, then a count)."""
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
                if failed <= MAX_RUN_ISSUES:
                    issues.append(item)
        if failed > MAX_RUN_ISSUES:
            path: DocPath = ("catalog", "feed") if self.catalog.feed is not None else ("catalog", "prefix")
            message = f"{failed} bad rows (on_bad_row: fail); the first {MAX_RUN_ISSUES} follow"
            issues.append(self.locations.issue(path, message))
        return sets, skipped

    def _judged(self, issues: list[ManifestIssue]) -> Iterator[CatalogSet | ManifestIssue]:
        c = self.catalog
        if c.feed is not None:
            source: DocPath = ("catalog", "feed")
            entries = read_feed(
                c.feed,
                self.sources,
                base_dir=self.base_dir,
                id_column=c.id or "",
                image_columns=c.images or (),
                var_columns=c.vars or (),
            )
        else:
            source = ("catalog", "prefix")
            entries = read_folder(c.prefix or "", c.pattern or "", self.sources, self.base_dir)
        try:
            for entry in entries:
                yield self._judge(entry)
        except MissingColumns as exc:
            header = ", ".join(exc.header[:20]) + (", …" if len(exc.header) > 20 else "")
            for column in exc.columns:
                message = f"no column {column!r} in {self.label} (its header has: {header})"
                issues.append(self.locations.issue(self._column_path(column), message))
        except FeedNotText as exc:
            issues.append(ManifestIssue(self.label, exc.line, exc.col, "feed", str(exc)))
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
        unsafe = unsafe_key(entry.id)
        if unsafe is not None:
            return self._bad(entry, id_field, f"id {entry.id!r} {unsafe}; ids are part of output keys")
        if entry.id in self._seen:
            first = self._seen[entry.id]
            where = f"first at line {first}" if first else "an inline image set has it"
            return self._bad(entry, id_field, f"duplicate image set id {entry.id!r} ({where})")
        if not entry.images:
            columns = self.catalog.images or []
            return self._bad(entry, "images", f"no image: {', '.join(columns)} {'is' if len(columns) == 1 else 'are'} empty")
        for column, ref in entry.images:
            problem = self.references.problem(ref)
            if problem is not None:
                return self._bad(entry, column or "images", problem)
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


def feed_label(feed: str, filename: str) -> str:
    """How issues name a feed: a local one beside the manifest as the manifest is named."""
    if "://" in feed or os.path.isabs(feed) or "://" in filename:
        return feed
    return os.path.normpath(os.path.join(os.path.dirname(filename), os.path.expanduser(feed)))


def max_images_spec(
    defaults: Defaults, prompts: tuple[Prompt, ...], runs: tuple[RunSpec, ...] | None, specs: Mapping[str, ModelSpec]
) -> ModelSpec | None:
    """Of the models any prompt or run may use, the one accepting the fewest images."""
    models = {model_of(defaults, p) for p in prompts} | {e.model for e in runs or () if e.model}
    known = [specs[name] for name in sorted(models) if name in specs]
    return min(known, key=lambda spec: spec.max_images) if known else None
