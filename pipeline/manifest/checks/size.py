"""The plan's size, counted by arithmetic before anything is expanded, is within the job's cap."""

from __future__ import annotations

from dataclasses import dataclass

from ...size import size_of
from .context import Context


@dataclass(frozen=True)
class Cap:
    """The most runs a job may have, and how that was set, as a person reads it."""

    runs: int
    where: str


def within_cap(ctx: Context, cap: Cap) -> bool:
    """Whether the manifest's runs are at most ``cap``; if not, one issue at the dimension
    that multiplies most (the manifest's first line when none does), with the count, the
    cost, the dimensions and how to raise the cap."""
    size = size_of(ctx.manifest, ctx.specs)
    if size.runs <= cap.runs:
        return True
    cost = f" (estimated ${size.usd:,.2f})" if size.usd is not None else ""
    dimensions = " × ".join(str(d) for d in size.dimensions if d.count != 1) or "its lists"
    largest = size.largest
    ctx.add(
        largest.path if largest is not None else (),
        f"{size.runs:,} runs{cost} are more than the {cap.runs:,} a job may have ({cap.where}): "
        f"{dimensions}. Make one of those smaller, or raise the cap: max_runs: {size.runs} at the "
        f"manifest's top level, or EDITPIPE_MAX_RUNS={size.runs}",
    )
    return False
