"""Loading a manifest: the YAML read, its structure validated, its catalog read, its meaning checked.

``load_manifest`` and ``parse_manifest`` either return a ``Manifest`` that plans without
surprises or raise ``ManifestError`` with every issue found, the manifest's own first (by
line), then those located in a feed. A manifest whose structure is partly broken is
salvaged field by field, so that the mistakes in what is sound are reported too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ..errors import ManifestError, ManifestIssue
from ..modelspec import ModelSpec
from ..plan import gc_paused
from ..size import DEFAULT_MAX_RUNS
from .catalog_rows import CatalogReader, feed_label, max_images_spec
from .checks import Cap, check_manifest
from .feeds import LOCAL_FILES, CatalogSources
from .publish import PublishSpec, resolve_publish
from .reader import DocPath, Locations, as_value, read_yaml
from .references import References
from .schema import (
    DEFAULT_OUTPUT_KEY,
    SUPPORTED_VERSION,
    Catalog,
    Defaults,
    ImageSet,
    ManifestDoc,
    Matrix,
    Prompt,
    PublishDoc,
    RunSpec,
    Strict,
    pydantic_issue,
)
from .value import CatalogSet, Manifest


def load_manifest(
    path: Path,
    specs: Mapping[str, ModelSpec],
    *,
    sources: CatalogSources = LOCAL_FILES,
    max_runs: int | None = None,
) -> Manifest:
    """Read and validate the manifest at ``path``; issues name the file as given.

    A ``catalog`` is read here (streamed, row by row) through ``sources``: the default reads
    local files only; ``pipeline.catalog.Sources`` reads https and ``s3://`` ones too.
    ``max_runs`` is the cap on the job's runs (``EDITPIPE_MAX_RUNS``; None: the default),
    unless the manifest sets its own. Raises ``ManifestError`` with every issue found (an
    unreadable file, or a byte that is not UTF-8, is one issue).
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ManifestError([ManifestIssue(str(path), 1, 1, "manifest", f"cannot read the manifest: {exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, col = byte_position(raw, exc.start)
        message = f"byte 0x{raw[exc.start]:02x} is not UTF-8; a manifest is UTF-8 text"
        raise ManifestError([ManifestIssue(str(path), line, col, "manifest", message)]) from None
    with gc_paused():
        return _parse(text, str(path), Path(os.path.abspath(path.parent)), specs, path, sources, max_runs)


def parse_manifest(
    text: str,
    filename: str,
    base_dir: Path,
    specs: Mapping[str, ModelSpec],
    *,
    sources: CatalogSources = LOCAL_FILES,
    max_runs: int | None = None,
) -> Manifest:
    """Validate manifest text not on disk (e.g. fetched from S3).

    ``filename`` names it in issues; local paths (images, a local output, a local catalog)
    resolve against ``base_dir``. A catalog is read through ``sources`` (a location they
    cannot read is an issue); ``max_runs`` as for ``load_manifest``. Raises
    ``ManifestError`` with every issue found.
    """
    with gc_paused():
        return _parse(text, filename, base_dir, specs, None, sources, max_runs)


def byte_position(raw: bytes, offset: int) -> tuple[int, int]:
    """The 1-based line and column (in characters) of the byte at ``offset`` of UTF-8 text
    that is valid before it."""
    start = raw.rfind(b"\n", 0, offset) + 1
    return raw.count(b"\n", 0, offset) + 1, len(raw[start:offset].decode("utf-8", "replace")) + 1


def _cap(data: Mapping[str, Any], locations: Locations, max_runs: int | None) -> Cap:
    own = as_value(data.get("max_runs"))
    if isinstance(own, int) and not isinstance(own, bool) and own >= 1:
        return Cap(own, f"max_runs, line {locations.at(('max_runs',))[0]}")
    if max_runs is not None:
        return Cap(max_runs, "EDITPIPE_MAX_RUNS")
    return Cap(DEFAULT_MAX_RUNS, "the default cap")


def _parse(
    text: str,
    filename: str,
    base_dir: Path,
    specs: Mapping[str, ModelSpec],
    path: Path | None,
    sources: CatalogSources,
    max_runs: int | None,
) -> Manifest:
    data, locations, issues = read_yaml(text, filename)
    if issues and data is None:
        raise ManifestError(issues)
    if not isinstance(data, dict):
        issues.append(locations.issue((), "the manifest must be a mapping of fields (version, name, output, …)"))
        raise ManifestError(issues)

    doc: ManifestDoc | None = None
    try:
        doc = ManifestDoc.model_validate(data)
    except ValidationError as exc:
        issues.extend(pydantic_issue(error, locations) for error in exc.errors())

    if doc is not None:
        doc.defaults._path = ("defaults",)
        defaults, matrix, output_key = doc.defaults, doc.matrix, doc.output_key
        image_sets = _located(doc.image_sets, "image_sets")
        prompts = _located(doc.prompts, "prompts")
        runs = _located(doc.runs, "runs") if doc.runs is not None else None
        catalog = doc.catalog
        publish_doc = doc.publish
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
        publish_doc = _try(PublishDoc, data["publish"], ("publish",)) if "publish" in data else None

    version = as_value(data.get("version"))
    if isinstance(version, int) and not isinstance(version, bool) and version != SUPPORTED_VERSION:
        issues.append(locations.issue(("version",), f"version {version} is not supported; this editpipe reads version 1"))
    if "catalog" not in data and "image_sets" not in data:
        issues.append(locations.issue(("image_sets",), "required field is missing (or a catalog)"))
    output = None
    if isinstance(data.get("output"), str):
        output, problem = _resolve_output(data["output"], base_dir)
        if problem:
            issues.append(locations.issue(("output",), problem))

    publish: PublishSpec | None = None
    if publish_doc is not None:
        publish, problem = resolve_publish(publish_doc, base_dir)
        if problem:
            issues.append(locations.issue(("publish", "to"), problem))

    references = References(base_dir)
    catalog_sets: list[CatalogSet] = []
    skipped: list[str] = []
    s3_etags: dict[str, str] = {}
    if catalog is not None:
        reader = CatalogReader(
            catalog,
            sources=sources,
            base_dir=base_dir,
            references=references,
            locations=locations,
            label=feed_label(catalog.feed, filename) if catalog.feed is not None else filename,
            inline_ids={s.id for s in image_sets},
            limit=max_images_spec(defaults, prompts, runs, specs),
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
        publish=publish,
    )
    check_manifest(manifest, specs, issues, references, _cap(data, locations, max_runs))
    if issues:
        # The manifest's own issues first, then those located in a feed.
        raise ManifestError(sorted(issues, key=lambda i: (i.file != filename, i.line, i.col)))
    return manifest


def _resolve_output(output: str, base_dir: Path) -> tuple[str | None, str | None]:
    """(resolved output, problem): ``s3://bucket[/prefix]`` as written, or an absolute directory."""
    if any(ord(c) < 0x20 for c in output):
        return None, "output must not contain a control character"
    if output.startswith("s3://"):
        bucket = output[len("s3://") :].split("/", 1)[0]
        return (output.rstrip("/"), None) if bucket else (None, "an s3 output needs a bucket: s3://bucket/prefix")
    if "://" in output:
        return None, "output is s3://bucket/prefix or a local directory"
    return os.path.abspath(base_dir / os.path.expanduser(output)), None


def _try(model: type[Strict], value: Any, path: DocPath) -> Any:
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


def _salvage(model: type[Strict], value: Any, where: str) -> tuple[Any, ...]:
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
