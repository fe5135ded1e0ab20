"""YAML read with the place of every node, so that any later check can say where a value was written.

``read_yaml(text, file)`` returns ``(data, locations, issues)``: plain Python data (mappings,
lists, strings, and ``Scalar`` for any other scalar), a ``Locations`` that maps each node's
document path to its 1-based line and column, and the issues found while reading (duplicate
keys, unsupported tags, invalid merges, alias loops), each a located ``ManifestIssue``. A
document that cannot be read at all gives ``data`` None and one issue saying why.

Scalars keep the text the user wrote: ``as_text`` gives it (``id: 0412`` stays "0412",
``aspect_ratio: 2:3`` stays "2:3" rather than YAML 1.1's sexagesimal 123), ``as_value`` the
value YAML resolved. Pydantic fields unwrap them with either one as a ``BeforeValidator``.
Manifests and the schedules file are both read this way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import ManifestIssue

DocPath = tuple[str | int, ...]

# Aliases can make a tiny document expand enormously ("billion laughs"): no real manifest
# comes near either bound. The first bounds the whole document, the second what its aliases
# repeat (each node read again through an alias counts once more).
MAX_NODES = 5_000_000
MAX_ALIASED_NODES = 100_000


@dataclass(frozen=True, slots=True)
class Scalar:
    """A YAML scalar that did not resolve to a string; keeps the text the user wrote.

    String fields take ``source``; number fields take ``value``; money takes ``source`` so
    that no float ever comes between the YAML and the ``Decimal``.
    """

    value: Any
    source: str

    def __repr__(self) -> str:
        return self.source


def as_text(value: Any) -> Any:
    """A scalar as the text written; anything else unchanged."""
    return value.source if isinstance(value, Scalar) else value


def as_value(value: Any) -> Any:
    """A scalar as the value YAML resolved it to; anything else unchanged."""
    return value.value if isinstance(value, Scalar) else value


@dataclass(frozen=True)
class Locations:
    """Where each node of a document was written: 1-based (line, column) by document path.

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
        """``message`` located at ``path`` (at the key naming it with ``key``)."""
        line, col = self.at(path, key=key)
        return ManifestIssue(self.file, line, col, field_name(path), message)


def field_name(path: DocPath) -> str:
    """``("image_sets", 0, "images")`` → ``image_sets[0].images``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "manifest"


def read_yaml(text: str, file: str) -> tuple[Any, Locations, list[ManifestIssue]]:
    """``text`` as plain data, the location of each node, and the issues found reading it
    (``file`` names it in them); data is None when the document cannot be read at all."""
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
    except yaml.reader.ReaderError as exc:
        line, col = _position(text, exc.position)
        what = f"character #x{exc.character:04x}" if isinstance(exc.character, int) else "character"
        return None, locations, [ManifestIssue(file, line, col, "yaml", f"invalid YAML: {what}: {exc.reason}")]
    except yaml.YAMLError as exc:
        return None, locations, [ManifestIssue(file, 1, 1, "yaml", f"invalid YAML: {exc}")]
    if root is None:
        return None, locations, [ManifestIssue(file, 1, 1, "manifest", "the manifest is empty")]
    try:
        data = reader.read(root, ())
    except _TooLarge as exc:
        line, col = exc.mark.line + 1, exc.mark.column + 1
        return None, locations, [ManifestIssue(file, line, col, "manifest", exc.message)]
    return data, locations, reader.issues


def _position(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column of character ``offset`` of ``text``."""
    start = text.rfind("\n", 0, offset) + 1
    return text.count("\n", 0, offset) + 1, offset - start + 1


class _TooLarge(Exception):
    def __init__(self, mark: yaml.Mark, message: str):
        self.mark = mark
        self.message = message


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
        self._read: set[int] = set()
        self._count = 0
        self._aliased = 0

    def _issue(self, mark: yaml.Mark, path: DocPath, message: str) -> None:
        self.issues.append(ManifestIssue(self.file, mark.line + 1, mark.column + 1, field_name(path), message))

    def read(self, node: yaml.Node, path: DocPath) -> Any:
        self._count += 1
        if self._count > MAX_NODES:
            raise _TooLarge(node.start_mark, f"the document has more than {MAX_NODES:,} nodes")
        if id(node) in self._read:
            self._aliased += 1
            if self._aliased > MAX_ALIASED_NODES:
                message = f"aliases repeat more than {MAX_ALIASED_NODES:,} nodes (this anchor's among them)"
                raise _TooLarge(node.start_mark, message)
        else:
            self._read.add(id(node))
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
        return None if value is None else Scalar(value, node.value)

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
