"""Checks of ids, run references, models and request options against the model specs."""

from __future__ import annotations

from ...modelspec import DEFAULT_MODEL, ModelSpec
from ...plan import model_of
from ..reader import DocPath
from ..schema import FIELD_VOCABULARY, ImageSet, Prompt, WithOptions, unknown_key
from .context import Context, Pair


def unique_ids(ctx: Context, items: tuple[ImageSet, ...] | tuple[Prompt, ...], label: str) -> bool:
    """Each of ``items`` has an id no earlier one has."""
    first: dict[str, int] = {}
    for item in items:
        line = ctx.locations.at(item._path + ("id",))[0]
        if item.id in first:
            ctx.add(item._path + ("id",), f"duplicate {label} id {item.id!r} (first at line {first[item.id]})")
        else:
            first[item.id] = line
    return len(first) == len(items)


def run_references(ctx: Context) -> bool:
    """Each run entry names an image set and a prompt that exist."""
    ok = True
    sets = {s.id for s in ctx.manifest.image_sets}
    prompts = {p.id for p in ctx.manifest.prompts}
    for entry in ctx.manifest.runs or ():
        if entry.image_set not in sets:
            ctx.add(entry._path + ("image_set",), f"no image set has id {entry.image_set!r}")
            ok = False
        if entry.prompt not in prompts:
            ctx.add(entry._path + ("prompt",), f"no prompt has id {entry.prompt!r}")
            ok = False
    return ok


def models(ctx: Context) -> None:
    """Every ``model`` named has a spec."""
    m = ctx.manifest
    holders: list[WithOptions] = [m.defaults, *m.prompts, *(m.runs or ())]
    for holder in holders:
        if holder.model is not None and holder.model not in ctx.specs:
            known = ", ".join(sorted(ctx.specs)) or "none"
            ctx.add(holder._path + ("model",), f"unknown model {holder.model!r} (known: {known})")


def options(ctx: Context, pairs: list[Pair]) -> None:
    """Every option set (defaults, prompts, runs, matrix) is one the models it meets know,
    with a value each allows; matrix values are listed once each."""
    m = ctx.manifest
    defaults = m.defaults
    all_models = {model_of(defaults, p, e) for _, p, e in pairs} or {defaults.model or DEFAULT_MODEL}
    prompt_models: dict[int, set[str]] = {}
    for _, prompt, entry in pairs:
        prompt_models.setdefault(id(prompt), set()).add(model_of(defaults, prompt, entry))
    _holder(ctx, defaults, all_models)
    for prompt in m.prompts:
        _holder(ctx, prompt, prompt_models.get(id(prompt), {model_of(defaults, prompt)}))
    for entry in m.runs or ():
        prompt = m.prompts_by_id.get(entry.prompt)
        model = model_of(defaults, prompt, entry) if prompt else entry.model or defaults.model or DEFAULT_MODEL
        _holder(ctx, entry, {model})
    for name, values in m.matrix.items():
        for spec in ctx.known_models(all_models):
            if name not in spec.options:
                ctx.add(("matrix", name), unknown_option(name, spec), key=True)
                break
            seen: set[str] = set()
            for i, value in enumerate(values):
                if value in seen:
                    ctx.add(("matrix", name, i), f"{value!r} is listed twice")
                seen.add(value)
                _value(ctx, ("matrix", name, i), name, value, spec)


def _holder(ctx: Context, holder: WithOptions, models: set[str]) -> None:
    for name, value in holder.options.items():
        for spec in ctx.known_models(models):
            if name not in spec.options:
                ctx.add(holder._path + (name,), unknown_option(name, spec), key=True)
                break
            if not _value(ctx, holder._path + (name,), name, value, spec):
                break


def unknown_option(name: str, spec: ModelSpec) -> str:
    known = [*FIELD_VOCABULARY, *spec.options]
    return unknown_key(name, known) + f"; {spec.name} options are: {', '.join(spec.options)}"


def _value(ctx: Context, path: DocPath, name: str, value: str, spec: ModelSpec) -> bool:
    allowed = spec.options[name].values
    if value in allowed:
        return True
    ctx.add(path, f"{value!r} is not an allowed {name} for {spec.name} (allowed: {', '.join(allowed)})")
    return False
