"""``{name}`` templates (prompt texts and ``output_key``) and what makes an output key safe."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from dataclasses import dataclass

PLACEHOLDER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_CONTROL = re.compile(r"[\x00-\x1f]")


@dataclass(frozen=True)
class Template:
    """A ``{name}`` template, parsed once and rendered by ``str.format_map``.

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
            if name is not None and (not PLACEHOLDER.match(name) or spec or conversion):
                raise ValueError(f"{{{name}}} is not a placeholder; use a plain name such as {{product}}")
            parts.append((literal, name))
        return cls(source, tuple(parts))

    @property
    def names(self) -> list[str]:
        """Placeholder names, in order of first use."""
        return list(dict.fromkeys(name for _, name in self.parts if name is not None))

    @property
    def fills_whole_segments(self) -> bool:
        """Whether every placeholder stands alone between ``/`` (or an end) of the template,
        as in ``{image_set}/{prompt}/{variant}``: a key rendered with values that hold no
        ``/`` then has a segment for each placeholder, each exactly its value."""
        parts = self.parts
        for i, (literal, name) in enumerate(parts):
            if name is None:
                continue
            if not (literal.endswith("/") or (i == 0 and not literal)):
                return False
            if i + 1 < len(parts) and not parts[i + 1][0].startswith("/"):
                return False
        return True

    def render(self, values: Mapping[str, str]) -> str:
        """Raises ``KeyError`` for a name ``values`` lacks."""
        # A parsed template is a valid str.format one whose fields are plain names only.
        return self.source.format_map(values)


def unsafe_key(key: str) -> str | None:
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
