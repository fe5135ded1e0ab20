"""Checks of inline image sets and of the names templates use: var names, the vars each
prompt uses, and the names ``output_key`` (and ``publish.to``) use."""

from __future__ import annotations

from ..reader import DocPath
from ..schema import RUN_FIELDS, ImageSet
from ..template import PLACEHOLDER, Template, unsafe_key
from ..value import CatalogSet
from .context import Context, Pair


def images(ctx: Context, image_set: ImageSet, models: set[str]) -> None:
    """Not more images than a model the set meets accepts, each one fetchable."""
    for spec in ctx.known_models(models):
        if len(image_set.images) > spec.max_images:
            ctx.add(
                image_set._path + ("images",),
                f"{len(image_set.images)} images; {spec.name} accepts at most {spec.max_images}",
            )
            break
    for i, ref in enumerate(image_set.images):
        problem = ctx.references.problem(ref)
        if problem:
            ctx.add(image_set._path + ("images", i), problem)


def var_names(ctx: Context, image_set: ImageSet, option_names: set[str]) -> None:
    for name in image_set.vars:
        _var_name(ctx, image_set._path + ("vars", name), name, option_names, key=True)


def catalog_var_names(ctx: Context, option_names: set[str]) -> None:
    """A feed's var columns are var names for every row: checked once, where they are listed."""
    catalog = ctx.manifest.catalog
    for i, name in enumerate(catalog.vars or () if catalog else ()):
        _var_name(ctx, ("catalog", "vars", i), name, option_names)


def _var_name(ctx: Context, path: DocPath, name: str, option_names: set[str], *, key: bool = False) -> None:
    if not PLACEHOLDER.match(name):
        ctx.add(path, f"var name {name!r} must start with a letter or _ and use letters, digits, _ or -", key=key)
    elif name in RUN_FIELDS or name == "model" or name in option_names:
        ctx.add(path, f"var name {name!r} is reserved for the run's own {name}", key=key)


def prompt_vars(ctx: Context, pairs: list[Pair]) -> bool:
    """Each prompt parses, and uses only vars every image set it meets has."""
    ok = True
    paired: dict[int, list[ImageSet]] = {}
    catalog_prompts = _catalog_prompts(ctx, pairs)
    catalog_vars = ctx.manifest.catalog_vars or ()
    for image_set, prompt, _ in pairs:
        if isinstance(image_set, CatalogSet):
            continue
        sets = paired.setdefault(id(prompt), [])
        if not sets or sets[-1] is not image_set:
            sets.append(image_set)
    for prompt in ctx.manifest.prompts:
        path = prompt._path + ("text",)
        try:
            template = Template.parse(prompt.text)
        except ValueError as exc:
            ctx.add(path, str(exc))
            ok = False
            continue
        for name in template.names:
            lacking = list(dict.fromkeys(s.id for s in paired.get(id(prompt), ()) if name not in s.vars))
            if lacking:
                ctx.add(path, f"{{{name}}} is not a var of {sets_phrase(lacking)}")
                ok = False
            if id(prompt) in catalog_prompts and name not in catalog_vars:
                ctx.add(path, _not_a_catalog_var(ctx, name))
                ok = False
    return ok


def output_key_names(ctx: Context, pairs: list[Pair], options: set[str] | None) -> bool:
    """``output_key`` parses, cannot be unsafe whatever its values, and uses only run fields,
    ``options`` (None: unknown, not judged) and vars every image set it meets has."""
    problems = key_template_problems(ctx, ctx.manifest.output_key, pairs, options)
    for problem in problems:
        ctx.add(("output_key",), problem)
    return not problems


def key_template_problems(ctx: Context, source: str, pairs: list[Pair], options: set[str] | None) -> list[str]:
    """What is wrong with a key template (``output_key``, or the key part of ``publish.to``):
    it must parse, be safe whatever its values, and use only run fields, ``options`` (None:
    unknown, not judged) and vars every image set it meets has. Empty when it is right."""
    m = ctx.manifest
    try:
        template = Template.parse(source)
    except ValueError as exc:
        return [str(exc)]
    # The template's own text can make every key unsafe (``../{image_set}``, ``/abs``):
    # say so even when other errors hold back the per-run check.
    static_problem = unsafe_key(template.render({name: "x" for name in template.names}))
    if static_problem is not None:
        return [f"{source!r} {static_problem}"]
    used_sets = list({id(s): s for s, _, _ in pairs if isinstance(s, ImageSet)}.values())
    catalog_used = bool(_catalog_prompts(ctx, pairs))
    problems = []
    for name in template.names:
        if name in RUN_FIELDS or options is None or name in options or not (used_sets or catalog_used):
            continue
        lacking = [s.id for s in used_sets if name not in s.vars]
        catalog_lacks = catalog_used and name not in (m.catalog_vars or ())
        if len(lacking) == len(used_sets) and (catalog_lacks or not catalog_used):
            known = ", ".join([*RUN_FIELDS, *sorted(options)])
            problems.append(f"unknown name {{{name}}}: use {known} or a var of every image set")
            continue
        if lacking:
            problems.append(f"{{{name}}} is not a var of {sets_phrase(lacking)}")
        if catalog_lacks:
            problems.append(_not_a_catalog_var(ctx, name))
    return problems


def _catalog_prompts(ctx: Context, pairs: list[Pair]) -> set[int]:
    """The prompts (by identity) that meet catalog sets, however many rows were usable."""
    m = ctx.manifest
    if m.catalog_vars is None:
        return set()
    if m.runs is None:
        return {id(p) for p in m.prompts}
    return {id(prompt) for image_set, prompt, _ in pairs if isinstance(image_set, CatalogSet)}


def _not_a_catalog_var(ctx: Context, name: str) -> str:
    m = ctx.manifest
    declared = m.catalog_vars or ()
    if m.catalog is not None and m.catalog.prefix is not None:
        return f"{{{name}}} is not a var of the catalog's sets: a folder catalog has only {{folder}}"
    listed = f" (it lists {', '.join(declared)})" if declared else ""
    return f"{{{name}}} is not a catalog var: name its column in catalog.vars{listed}"


def sets_phrase(ids: list[str]) -> str:
    shown = ", ".join(repr(i) for i in ids[:3])
    more = f" and {len(ids) - 3} more" if len(ids) > 3 else ""
    return f"image set {shown}" if len(ids) == 1 else f"image sets {shown}{more}"
