"""What a structurally valid manifest means, judged against the model specs.

``check_manifest`` runs every check and appends what it finds to ``issues``; it never stops
early, so ``editpipe validate`` reports every mistake at once. Checks whose findings would
only echo earlier ones (the output key of each run, when ids, options or templates are
wrong) are held back until those are right.

- ``options``: ids, run references, models, request options and their values;
- ``names``: inline image sets, var names, the vars prompts use, the names ``output_key`` (and
  ``publish.to``) use;
- ``keys``: the output key of every run ``pipeline.plan`` expands, safe and used once;
- ``size``: the number of runs, counted by arithmetic, within the job's cap. Over it, no
  check walks every run (nor more than ``MAX_PAIRS_OVER_CAP`` pairs).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping

from ...errors import ManifestIssue
from ...modelspec import ModelSpec
from ...plan import model_of, pairs
from ..publish import PublishSpec
from ..references import References
from ..value import CatalogSet, Manifest
from . import keys, names, options
from .context import Context, Pair
from .size import Cap, within_cap

__all__ = ["Cap", "check_manifest", "publish_problems"]

# Over the cap the manifest is refused whatever else is wrong: its other checks look at this
# many image set × prompt pairs at most.
MAX_PAIRS_OVER_CAP = 100_000


def check_manifest(
    manifest: Manifest,
    specs: Mapping[str, ModelSpec],
    issues: list[ManifestIssue],
    references: References,
    cap: Cap,
) -> None:
    """Append every semantic issue of ``manifest`` to ``issues`` (catalog rows were judged
    as they were read); a manifest of more runs than ``cap`` is refused before any check
    walks its runs."""
    ctx = Context(manifest, specs, issues, references)
    m = manifest
    inline = ctx.inline_sets
    ids_ok = options.unique_ids(ctx, inline, "image set") & options.unique_ids(ctx, m.prompts, "prompt")
    refs_ok = options.run_references(ctx)
    size_ok = within_cap(ctx, cap)
    checked = list(itertools.islice(_pairs_to_check(m), None if size_ok else MAX_PAIRS_OVER_CAP)) if refs_ok else []
    options.models(ctx)
    before = len(issues)
    options.options(ctx, checked)
    options_ok = len(issues) == before
    set_models: dict[int, set[str]] = {}
    catalog_models: set[str] = set()
    for image_set, prompt, entry in checked:
        model = model_of(m.defaults, prompt, entry)
        if isinstance(image_set, CatalogSet):
            catalog_models.add(model)
        else:
            set_models.setdefault(id(image_set), set()).add(model)
    # Without valid pairs (all reported already), judge names by the models prompts name.
    used_models = set().union(catalog_models, *set_models.values()) or {model_of(m.defaults, p) for p in m.prompts}
    option_names = {name for spec in ctx.known_models(used_models) for name in spec.options}
    for image_set in inline:
        names.images(ctx, image_set, set_models.get(id(image_set), set()))
        names.var_names(ctx, image_set, option_names)
    if m.catalog_vars is not None:
        names.catalog_var_names(ctx, option_names)
    templates_ok = names.prompt_vars(ctx, checked)
    # An unknown model (reported already) leaves its option names unknown too.
    known_options = option_names if used_models <= set(specs) else None
    key_ok = names.output_key_names(ctx, checked, known_options)
    if m.publish is not None:
        for problem in names.key_template_problems(ctx, m.publish.key, checked, known_options):
            ctx.add(("publish", "to"), problem)
    # Colliding or unrenderable keys would only echo the issues above.
    if size_ok and ids_ok and refs_ok and options_ok and templates_ok and key_ok:
        keys.output_keys(ctx)


def publish_problems(manifest: Manifest, specs: Mapping[str, ModelSpec], publish: PublishSpec) -> list[str]:
    """What is wrong with a ``publish.to`` set apart from the manifest (a schedule's) for this
    valid manifest: the names its key uses, judged as ``output_key``'s are."""
    ctx = Context(manifest, specs, [], References(manifest.base_dir))
    checked = list(itertools.islice(_pairs_to_check(manifest), MAX_PAIRS_OVER_CAP))
    models = {model_of(manifest.defaults, prompt, entry) for _, prompt, entry in checked}
    option_names = {name for spec in ctx.known_models(models) for name in spec.options}
    return names.key_template_problems(ctx, publish.key, checked, option_names)


def _pairs_to_check(manifest: Manifest) -> Iterator[Pair]:
    """Every pair of an inline image set, and one pair per prompt (or run entry) of the
    catalog's sets: those all declare the same vars and were judged as they were read, so
    the checks would find the same in each of 100,000 rows."""
    if manifest.runs is not None:
        yield from pairs(manifest)  # each run entry is a pair of its own
        return
    for image_set in manifest.image_sets:  # the inline sets, then the catalog's
        for prompt in manifest.prompts:
            yield image_set, prompt, None
        if isinstance(image_set, CatalogSet):
            return
