"""What every check shares: the manifest, the model specs, and the list issues go to."""

from __future__ import annotations

from collections.abc import Mapping

from ...errors import ManifestIssue
from ...modelspec import ModelSpec
from ..reader import DocPath
from ..references import References
from ..schema import ImageSet, Prompt, RunSpec
from ..value import AnyImageSet, Manifest

# Issues found by walking every planned run (or every catalog row) are capped so that one
# systematic mistake in a 100,000-run manifest stays readable.
MAX_RUN_ISSUES = 20

Pair = tuple[AnyImageSet, Prompt, RunSpec | None]


class Context:
    """A manifest under check: ``add`` appends a located issue (once per place and message);
    no check stops early, so that every issue is found in one pass."""

    def __init__(
        self, manifest: Manifest, specs: Mapping[str, ModelSpec], issues: list[ManifestIssue], references: References
    ):
        self.manifest = manifest
        self.specs = specs
        self.issues = issues
        self.locations = manifest.locations
        self.references = references
        self._reported: set[tuple[DocPath, str]] = set()

    def add(self, path: DocPath, message: str, *, key: bool = False) -> None:
        # A value checked against several models would otherwise repeat one issue.
        if (path, message) not in self._reported:
            self._reported.add((path, message))
            self.issues.append(self.locations.issue(path, message, key=key))

    def known_models(self, models: set[str]) -> list[ModelSpec]:
        """The specs of ``models`` that exist, by name (unknown ones are reported elsewhere)."""
        return [self.specs[name] for name in sorted(models) if name in self.specs]

    @property
    def inline_sets(self) -> tuple[ImageSet, ...]:
        return tuple(s for s in self.manifest.image_sets if isinstance(s, ImageSet))
